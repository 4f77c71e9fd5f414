"""Metrics, health and readiness of a real worker on the real broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.deploy.promql import (
    dashboard_exprs,
    exposed_names,
    recorded_names,
    rule_exprs,
    unknown_names,
)
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import make_events
from tests.kafka_fixtures import consume, produce
from worker.config import load_config
from worker.runtime.main import make_worker

pytestmark = pytest.mark.kafka

INVALID = {
    "json": [b"{oops", b"", b"[1, 2"],
    "unknown_model": [
        orjson.dumps({"request_id": f"u{i}", "model": "gpt-x", "probs": [1, 0, 0]})
        for i in range(4)
    ],
    "schema": [orjson.dumps({"request_id": f"s{i}", "model": "bert-base"}) for i in range(3)],
    "not_normalised": [
        orjson.dumps({"request_id": f"n{i}", "model": "bert-base", "probs": [0.5, 0.5, 0.5]})
        for i in range(3)
    ],
}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in an exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, rest = series.partition("{")
        if metric != name:
            continue
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got == want:
            return float(value)
    return 0.0


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


async def test_counters_match_what_was_sent(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """1,000 complete and 200 partial requests and 13 invalid events (by reason) show up
    as exactly those counts in a scrape of /metrics, which promtool accepts, and every
    metric the dashboard and the alert rules use is in that scrape."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(join={"timeout_ms": 500, "min_models": 2})
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    events = make_events(1000, seed=31, prefix="c")
    events += [e for e in make_events(200, seed=32, prefix="p") if e["model"] != "distilbert"]
    records: list[tuple[bytes | None, bytes | None]] = [
        (e["request_id"].encode(), orjson.dumps(e)) for e in events
    ]
    records += [(b"bad", v) for values in INVALID.values() for v in values]
    await produce(p.bootstrap, p.inputs[0], records)
    assert len(await consume(p.bootstrap, p.output, 1200, timeout_s=60)) == 1200

    text = ""
    for _ in range(50):  # the results are counted right after they are queued
        _, text = worker.get("/metrics")
        if sample(text, "fusion_results_total", strategy="soft_vote", status="partial") == 200:
            break
        await asyncio.sleep(0.1)

    assert sample(text, "fusion_results_total", strategy="soft_vote", status="complete") == 1000
    assert sample(text, "fusion_results_total", strategy="soft_vote", status="partial") == 200
    assert sample(text, "fusion_results_total", strategy="soft_vote", status="insufficient") == 0
    for reason, values in INVALID.items():
        assert sample(text, "fusion_dlq_total", reason=reason) == len(values), reason
    assert sample(text, "fusion_model_missing_total", model="distilbert") == 200
    assert sample(text, "fusion_model_missing_total", model="bert-base") == 0
    assert sample(text, "fusion_events_total", model="bert-base", outcome="accepted") == 1200
    assert sample(text, "fusion_events_total", model="distilbert", outcome="accepted") == 1000

    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run scripts/install-promtool.sh (make test does)"
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    exposed = exposed_names(text)
    assert unknown_names(dashboard_exprs(), exposed) == {}
    assert unknown_names(rule_exprs(), exposed, known=recorded_names()) == {}


async def test_loop_time_is_counted_by_phase(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """A worker that fused 300 requests shows time in the fetch, process and clients
    phases of fusion_loop_seconds_total, and the phases add up to no more than the time
    the worker has run."""
    p: Pipeline = await pipeline(partitions=2)
    started = time.monotonic()
    worker = spawn_worker(p.config(), p.port)
    worker.wait_ready()
    events = make_events(300, seed=33, prefix="t")
    await produce(
        p.bootstrap, p.inputs[0], [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    )
    assert len(await consume(p.bootstrap, p.output, 300, timeout_s=60)) == 300

    _, text = worker.get("/metrics")
    ran_s = time.monotonic() - started
    phases = {
        phase: sample(text, "fusion_loop_seconds_total", phase=phase)
        for phase in ("fetch", "process", "clients", "commit")
    }
    for phase in ("fetch", "process", "clients"):
        assert phases[phase] > 0, phases
    assert sum(phases.values()) <= ran_s, (phases, ran_s)


async def test_readyz_503_before_assignment_and_200_after(pipeline: Callable[..., Any]) -> None:
    """/readyz answers 503 while the worker is not yet assigned, 200 once it is; /healthz
    is 200 throughout."""
    p: Pipeline = await pipeline(partitions=1)
    worker = make_worker(load_config(p.config(), env={}))
    base = f"http://127.0.0.1:{p.port}"
    seen: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append(http_status(base + "/readyz"))
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.assigned.wait(), 30)
        await asyncio.sleep(0.3)
        healthz = await asyncio.to_thread(http_status, base + "/healthz")
    finally:
        stop.set()
        poller.join()
        worker.request_stop()
        await run
        await worker.stop()
    answered = [s for s in seen if s]
    assert answered[0] == 503
    assert answered[-1] == 200
    assert healthz == 200


async def answers_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within 5 s. The loop beats at its next turn, which may
    first run the cycle collector's full collection (marked at each assignment): in a
    long test session that walks the whole pytest process and can outlast the 0.3 s
    liveness timeout, right after the assignment as after the stall."""
    for _ in range(50):
        if await asyncio.to_thread(http_status, url) == 200:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_healthz_fails_while_the_loop_is_stuck(pipeline: Callable[..., Any]) -> None:
    """When the asyncio loop stops iterating for longer than liveness_timeout_ms,
    /healthz answers 503 (from the server thread), and 200 again once it runs."""
    p: Pipeline = await pipeline(partitions=1)
    path = p.config()
    with path.open("a") as fh:
        fh.write("liveness_timeout_ms = 300\n")  # appended to the [metrics] table
    worker = make_worker(load_config(path, env={}))
    url = f"http://127.0.0.1:{p.port}/healthz"
    await worker.start()
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.assigned.wait(), 30)
        assert await answers_ok(url)
        during: list[int] = []
        probe = threading.Timer(0.8, lambda: during.append(http_status(url)))
        probe.start()
        time.sleep(1.2)  # noqa: ASYNC251 - blocking the loop is the point of this test
        probe.join()
        after = await answers_ok(url)
    finally:
        worker.request_stop()
        await run
        await worker.stop()
    assert during == [503]
    assert after
