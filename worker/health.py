"""The worker's HTTP endpoints: /metrics (Prometheus exposition), /healthz (liveness)
and /readyz (readiness).

The server runs in its own daemon thread (stdlib ``ThreadingHTTPServer``), so it keeps
answering while the asyncio loop is blocked; that is what lets /healthz report a stuck
loop instead of timing out with it. ``Health`` is the state the loop updates and the
server reads: plain attribute writes, which are atomic under the GIL.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.config import MetricsConfig
from worker.errors import ConfigError

log = logging.getLogger(__name__)


class Health:
    """Liveness and readiness of one worker.

    Live: the loop called ``beat()`` less than ``liveness_timeout_s`` ago (the creation
    counts as a beat, so a starting worker has that long to reach its loop). Ready: live,
    assigned at least one partition and connected to the broker. ``clock`` must be the
    clock the loop passes to ``beat()`` (monotonic seconds by default).
    """

    def __init__(
        self, liveness_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not liveness_timeout_s > 0:
            raise ValueError(f"liveness_timeout_s must be > 0, got {liveness_timeout_s!r}")
        self.liveness_timeout_s = liveness_timeout_s
        self._clock = clock
        self._last_beat = clock()
        self._assigned = False
        self._connected = False

    def beat(self, now_s: float) -> None:
        """The loop is alive. Call at the top of every loop iteration (and while waiting
        for the broker, so that an outage does not fail liveness), with ``clock()``."""
        self._last_beat = now_s

    def set_assigned(self, assigned: bool) -> None:
        """Call after every assignment: True when at least one partition is assigned."""
        self._assigned = assigned

    def set_connected(self, connected: bool) -> None:
        """Call when the broker connection is known to be up (a fetch or commit worked)
        or down (a Kafka error in the loop)."""
        self._connected = connected

    def liveness(self) -> tuple[bool, str]:
        """(live, reason): what /healthz answers."""
        age = self._clock() - self._last_beat
        if age > self.liveness_timeout_s:
            return False, (
                f"loop stalled: last iteration {age:.1f}s ago "
                f"(liveness timeout {self.liveness_timeout_s:g}s)"
            )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): what /readyz answers."""
        live, why = self.liveness()
        if not live:
            return False, why
        if not self._connected:
            return False, "not connected to the Kafka broker"
        if not self._assigned:
            return False, "no partition assigned"
        return True, "ok"


class HealthServer:
    """Serves /metrics, /healthz and /readyz on ``host:port`` from a daemon thread.

    ``start()`` binds (port 0 picks a free port: read ``port`` afterwards) and raises
    ConfigError when the address cannot be bound; ``stop()`` shuts the server down.
    Both are idempotent.
    """

    def __init__(self, health: Health, registry: CollectorRegistry, host: str, port: int) -> None:
        self.health = health
        self.registry = registry
        self.host = host
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls, health: Health, registry: CollectorRegistry, config: MetricsConfig
    ) -> HealthServer:
        """A server bound to ``[metrics] host`` and ``port``."""
        return cls(health, registry, config.host, config.port)

    @property
    def port(self) -> int:
        """The bound port (the requested one until ``start()``)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve in a daemon thread. Call once at worker start, before connecting
        to Kafka, so /healthz and /metrics answer during start-up."""
        if self._server is not None:
            return
        server_cls = _V6Server if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self._requested_port), _handler(self))
        except OSError as exc:
            raise ConfigError(
                "metrics.port", self._requested_port, f"cannot listen on {self.host}: {exc}"
            ) from None
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # The poll interval bounds how long stop() waits for the thread.
            kwargs={"poll_interval": 0.1},
            name="fusion-health",
            daemon=True,
        )
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket. Call at worker stop; safe twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request path; the handler's only logic."""
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if route in ("/healthz", "/readyz"):
            ok, why = self.health.liveness() if route == "/healthz" else self.health.readiness()
            return (200 if ok else 503), _TEXT, f"{why}\n".encode()
        return 404, _TEXT, b"not found: try /metrics, /healthz or /readyz\n"


_TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _V6Server(_Server):
    address_family = socket.AF_INET6


def _handler(owner: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fusion-worker"

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            status, content_type, payload = owner.respond(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit these endpoints every few seconds: keep them out of INFO logs.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s - %s", self.address_string(), format % args)

    return Handler
