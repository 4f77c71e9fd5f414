"""The worker's HTTP endpoints: /metrics (Prometheus exposition), /healthz (liveness)
and /readyz (readiness).

The server runs in its own daemon thread (stdlib ``ThreadingHTTPServer``), so it keeps
answering while the asyncio loop is blocked; that is what lets /healthz report a stuck
loop instead of timing out with it. ``Health`` is the state the loop updates and the
server reads: plain attribute writes, which are atomic under the GIL.

/metrics is prometheus_client's own WSGI app, called from that thread: its content
negotiation (OpenMetrics when the scraper's Accept header asks for it), gzip and the
``name[]`` filter are the library's, so they follow the library rather than a copy here.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, make_wsgi_app

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
        self._failed: str | None = None

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

    def set_failed(self, reason: str) -> None:
        """The worker cannot make progress and is stopping (a fatal Kafka error): not
        live from now on, whatever the loop does while it shuts down."""
        self._failed = reason

    def liveness(self) -> tuple[bool, str]:
        """(live, reason): what /healthz answers."""
        if self._failed is not None:
            return False, f"stopping: {self._failed}"
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


class Response(NamedTuple):
    """One HTTP answer: status code, headers (Content-Type among them) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


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
        self._metrics_app = make_wsgi_app(registry)
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

    def respond(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        """The answer to a GET of ``path`` (with its query string) with request
        ``headers`` (Accept and Accept-Encoding matter to /metrics); the handler's only
        logic."""
        route, _, query = path.partition("?")
        if route == "/metrics":
            return self._metrics(query, headers or {})
        if route in ("/healthz", "/readyz"):
            ok, why = self.health.liveness() if route == "/healthz" else self.health.readiness()
            return Response(200 if ok else 503, [_TEXT], f"{why}\n".encode())
        return Response(404, [_TEXT], b"not found: try /metrics, /healthz or /readyz\n")

    def _metrics(self, query: str, headers: Mapping[str, str]) -> Response:
        environ = {
            # HEAD is answered as a GET without its body by the handler: the WSGI app
            # itself refuses HEAD with 405, which would fail probes that use it.
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/metrics",
            "QUERY_STRING": query,
        }
        # HTTP header names are case-insensitive.
        lowered = {name.lower(): value for name, value in headers.items()}
        for name, key in (("accept", "HTTP_ACCEPT"), ("accept-encoding", "HTTP_ACCEPT_ENCODING")):
            if name in lowered:
                environ[key] = lowered[name]
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            started.append((status, response_headers))

        chunks: Iterable[bytes] = self._metrics_app(environ, start_response)
        body = b"".join(chunks)
        status, response_headers = started[0]
        return Response(int(status.split(" ", 1)[0]), list(response_headers), body)


_TEXT = ("Content-Type", "text/plain; charset=utf-8")


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
            answer = owner.respond(self.path, dict(self.headers.items()))
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if body:
                self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit these endpoints every few seconds: keep them out of INFO logs.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s - %s", self.address_string(), format % args)

    return Handler
