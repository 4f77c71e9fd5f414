"""worker.health: liveness and readiness rules, and the HTTP server that serves them with
/metrics from its own thread, on a real loopback socket."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from worker.config import MetricsConfig
from worker.errors import ConfigError
from worker.health import Health, HealthServer
from worker.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request to the server."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def fetch(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """(status, response headers, raw body) of one request sent with ``headers``."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers=headers or {}, method=method
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, dict(resp.headers.items()), resp.read()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> Health:
    return Health(30.0, clock=clock)


@pytest.fixture
def server(health: Health) -> Iterator[HealthServer]:
    registry = CollectorRegistry()
    Metrics(registry, models=("bert",))
    srv = HealthServer(health, registry, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


def test_healthz_ok_after_a_beat(server: HealthServer, health: Health, clock: FakeClock) -> None:
    """/healthz answers 200 while the last beat is within the liveness timeout."""
    clock.now += 100
    health.beat(clock.now)
    clock.now += 29
    assert get(server.port, "/healthz")[::2] == (200, "ok\n")


def test_healthz_fails_when_the_loop_stops_beating(
    server: HealthServer, health: Health, clock: FakeClock
) -> None:
    """/healthz answers 503, saying the loop stalled, once the last beat is too old."""
    health.beat(clock.now)
    clock.now += 31
    status, _, body = get(server.port, "/healthz")
    assert status == 503
    assert "loop stalled" in body
    assert "31.0s ago" in body


def test_creation_counts_as_a_beat(clock: FakeClock) -> None:
    """A starting worker is live for one timeout before its loop first beats."""
    h = Health(5.0, clock=clock)
    clock.now += 4
    assert h.liveness()[0]
    clock.now += 2
    assert not h.liveness()[0]


def test_readyz_needs_connection_and_assignment(server: HealthServer, health: Health) -> None:
    """/readyz is 503 with the reason until connected and assigned, then 200."""
    assert get(server.port, "/readyz")[::2] == (503, "not connected to the Kafka broker\n")
    health.set_connected(True)
    assert get(server.port, "/readyz")[::2] == (503, "no partition assigned\n")
    health.set_assigned(True)
    assert get(server.port, "/readyz")[::2] == (200, "ok\n")
    health.set_connected(False)
    assert get(server.port, "/readyz")[0] == 503


def test_readyz_fails_when_not_live(server: HealthServer, health: Health, clock: FakeClock) -> None:
    """A stalled loop is not ready either, even when connected and assigned."""
    health.set_connected(True)
    health.set_assigned(True)
    clock.now += 60
    status, _, body = get(server.port, "/readyz")
    assert status == 503
    assert "loop stalled" in body


def test_metrics_serves_the_registry(server: HealthServer) -> None:
    """/metrics answers the registry's exposition; without an Accept header, in the
    Prometheus text format 0.0.4 (what prometheus_client's exposition negotiates)."""
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_PLAIN_0_0_4
    assert 'fusion_events_total{model="bert",outcome="accepted"} 0.0' in body


def test_metrics_in_openmetrics_when_the_accept_header_asks(server: HealthServer) -> None:
    """A scraper that accepts OpenMetrics (as Prometheus does) gets OpenMetrics: its
    content type, counter families without _total and the closing # EOF."""
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = fetch(server.port, "/metrics", {"Accept": accept})
    text = body.decode()
    assert status == 200
    assert headers["Content-Type"].startswith(OPENMETRICS)
    assert "# TYPE fusion_events counter\n" in text
    assert 'fusion_events_total{model="bert",outcome="accepted"} 0.0\n' in text
    assert text.endswith("# EOF\n")


def test_metrics_gzipped_when_asked(server: HealthServer) -> None:
    """Accept-Encoding: gzip gets a gzip body (Content-Encoding: gzip) holding the same
    exposition; without it the body is plain."""
    _, headers, body = fetch(server.port, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    text = gzip.decompress(body).decode()
    assert 'fusion_events_total{model="bert",outcome="accepted"} 0.0' in text
    _, plain_headers, plain = fetch(server.port, "/metrics")
    assert "Content-Encoding" not in plain_headers
    assert plain.startswith(b"# HELP")


def test_metrics_name_filter(server: HealthServer) -> None:
    """``name[]`` query parameters restrict the exposition to those series."""
    path = "/metrics?name[]=fusion_pending_requests&name[]=fusion_fetch_paused"
    _, _, body = fetch(server.port, path)
    names = {
        line.split("{")[0].split(" ")[0]
        for line in body.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert names == {"fusion_pending_requests", "fusion_fetch_paused"}


def test_metrics_head_answers_without_body(server: HealthServer) -> None:
    """HEAD /metrics answers 200 with the content type and no body (prometheus_client's
    app alone would answer 405)."""
    status, headers, body = fetch(server.port, "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4


def test_respond_reads_header_names_in_any_case(health: Health) -> None:
    """respond() matches Accept whatever the case of the header name, as HTTP requires."""
    srv = HealthServer(health, CollectorRegistry(), "127.0.0.1", 0)
    answer = srv.respond("/metrics", {"ACCEPT": "application/openmetrics-text"})
    assert answer.status == 200
    assert dict(answer.headers)["Content-Type"] == OPENMETRICS


def test_head_answers_without_body(server: HealthServer) -> None:
    """HEAD (as some probes send) gets the status and no body."""
    assert get(server.port, "/healthz", method="HEAD")[::2] == (200, "")


def test_unknown_path_is_404(server: HealthServer) -> None:
    """Any other path answers 404 naming the endpoints."""
    status, _, body = get(server.port, "/nope")
    assert status == 404
    assert "/metrics" in body


def test_port_zero_binds_a_free_port(server: HealthServer) -> None:
    """With port 0 the server picks a free port and exposes it."""
    assert server.port > 0


def test_start_and_stop_are_idempotent(health: Health) -> None:
    """start() twice keeps one server; stop() twice is safe; the port is closed after."""
    srv = HealthServer(health, CollectorRegistry(), "127.0.0.1", 0)
    srv.start()
    port = srv.port
    srv.start()
    assert srv.port == port
    srv.stop()
    srv.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_busy_port_is_a_config_error(health: Health) -> None:
    """A port already in use raises ConfigError naming metrics.port and the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        srv = HealthServer(health, CollectorRegistry(), "127.0.0.1", port)
        with pytest.raises(ConfigError, match=f"'metrics.port' = {port}"):
            srv.start()


def test_from_config_uses_host_and_port(health: Health) -> None:
    """from_config binds [metrics] host and port."""
    cfg = MetricsConfig(host="127.0.0.1", port=0)
    with HealthServer.from_config(health, CollectorRegistry(), cfg) as srv:
        assert get(srv.port, "/healthz")[0] == 200


def test_liveness_timeout_must_be_positive() -> None:
    """A zero liveness timeout is refused with the value in the message."""
    with pytest.raises(ValueError, match="got 0"):
        Health(0)


async def test_healthz_answers_while_the_event_loop_is_blocked() -> None:
    """The server thread answers while the asyncio loop is blocked, and reports the stall:
    the loop beats, then blocks (time.sleep) past a tiny timeout and asks /healthz from
    inside the blocked loop."""
    health = Health(0.05)
    with HealthServer(health, CollectorRegistry(), "127.0.0.1", 0) as srv:
        health.beat(time.monotonic())
        assert get(srv.port, "/healthz")[0] == 200
        await asyncio.sleep(0)
        # Blocking calls on purpose: nothing else runs on this loop until they return.
        time.sleep(0.2)  # noqa: ASYNC251
        status, _, body = get(srv.port, "/healthz")
        assert status == 503
        assert "loop stalled" in body


def test_a_worker_stopping_on_a_fatal_error_is_not_live() -> None:
    """After set_failed, /healthz answers not live with the reason, however recent the
    last beat: the worker cannot make progress."""
    clock = FakeClock()
    health = Health(30.0, clock=clock)
    health.beat(clock())
    health.set_failed("topic in-a does not exist")
    live, why = health.liveness()
    assert not live
    assert "topic in-a does not exist" in why
    assert not health.readiness()[0]
