"""Backpressure on the real broker: a flood of requests that never complete, far beyond
max_pending. Fetching pauses at the bound, fetching resumes as deadlines expire, every
request still gets its result, and the worker's memory is measured from /proc."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import WorkerProcess, make_events, metric
from tests.kafka_fixtures import consume, decode_values, produce_json

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

MODELS2 = ("bert-base", "roberta")
MAX_PENDING = 1000
FLOOD = 100_000
WARM_UP = 2000
# Short deadlines keep the test short: at most MAX_PENDING requests expire per
# TIMEOUT_MS, so the flood drains in FLOOD / MAX_PENDING * TIMEOUT_MS = 10 s or more.
TIMEOUT_MS = 100
SAMPLED = (
    "/metrics?name[]=fusion_pending_requests&name[]=fusion_fetch_paused&name[]=fusion_results_total"
)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def gauge(text: str, name: str) -> float:
    """The value of an unlabelled gauge in an exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the exposition")


@dataclass
class Flood:
    """What one flood did: the results, and what a sampler saw every 50 ms."""

    results: list[dict[str, Any]] = field(default_factory=list)
    baseline_mb: float = 0.0
    rss_mb: list[float] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)
    paused: list[float] = field(default_factory=list)
    fused: list[float] = field(default_factory=list)  # results so far, flood's only
    paused_at_end: float = -1.0
    log: str = ""
    elapsed_s: float = 0.0

    def rss_when_fused(self, share: float) -> float:
        """Peak RSS up to the first sample with ``share`` of the flood fused."""
        for i, n in enumerate(self.fused):
            if n >= share * FLOOD:
                return max(self.rss_mb[: i + 1])
        return max(self.rss_mb)

    def summary(self) -> str:
        return (
            f"{FLOOD} requests in {self.elapsed_s:.1f}s; RSS {self.baseline_mb:.0f} MB after "
            f"warm-up, {self.rss_when_fused(0.5):.0f} MB at half, peak "
            f"{max(self.rss_mb):.0f} MB; max pending {max(self.pending):.0f}; "
            f"{self.log.count('paused fetching')} pauses; {len(self.rss_mb)} samples"
        )


def sample(worker: WorkerProcess, stop: threading.Event, out: Flood) -> None:
    assert worker.proc is not None
    while not stop.is_set():
        rss = rss_mb(worker.proc.pid)
        status, text = worker.get(SAMPLED)
        if status == 200:
            out.rss_mb.append(rss)
            out.pending.append(gauge(text, "fusion_pending_requests"))
            out.paused.append(gauge(text, "fusion_fetch_paused"))
            out.fused.append(metric(text, "fusion_results_total") - WARM_UP)
        time.sleep(0.05)


async def flood(pipeline: Callable[..., Any], spawn_worker: WorkerFactory) -> Flood:
    """max_pending 1,000, timeout_ms 100, two models of which only one ever reports:
    warm up with 2,000 complete requests, then 100,000 events of the one model."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(models=MODELS2, join={"timeout_ms": TIMEOUT_MS, "max_pending": MAX_PENDING})
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    assert worker.proc is not None
    # Warm up first (lazy imports of the fusion maths, the clients' buffers), so that
    # the baseline is a running worker's and what follows is the flood's.
    await produce_json(p.bootstrap, p.inputs[0], make_events(WARM_UP, models=MODELS2, seed=50))
    assert len(await consume(p.bootstrap, p.output, WARM_UP, timeout_s=60)) == WARM_UP
    out = Flood(baseline_mb=rss_mb(worker.proc.pid))
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(worker, stop, out), daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        events = make_events(FLOOD, models=("bert-base",), seed=51, prefix="f")
        await produce_json(p.bootstrap, p.inputs[0], events)
        records = await consume(p.bootstrap, p.output, WARM_UP + FLOOD, timeout_s=240, idle_s=1)
    finally:
        stop.set()
        sampler.join(timeout=10)
    out.elapsed_s = time.monotonic() - started
    out.results = [r for r in decode_values(records) if r["request_id"].startswith("f-")]
    out.paused_at_end = gauge(worker.get("/metrics")[1], "fusion_fetch_paused")
    out.log = worker.log.read_text(errors="replace")
    print(f"backpressure: {out.summary()}")
    return out


async def test_flood_pauses_at_max_pending_resumes_and_loses_nothing(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """100,000 requests that never complete against max_pending 1,000: fetching pauses
    (gauge and log), pending requests never exceed the bound, fetching resumes as
    deadlines expire (gauge 0 at the end, the log says so), and every request gets
    exactly one partial result naming the silent model."""
    run = await flood(pipeline, spawn_worker)

    ids = [r["request_id"] for r in run.results]
    assert len(ids) == FLOOD, run.log[-3000:]
    assert len(set(ids)) == FLOOD
    assert {r["status"] for r in run.results} == {"partial"}
    assert all(r["missing"] == ["roberta"] for r in run.results)

    assert max(run.paused) == 1, "fetching never paused"
    assert run.paused_at_end == 0, "fetching did not resume"
    assert MAX_PENDING * 0.9 <= max(run.pending) <= MAX_PENDING
    assert "paused fetching" in run.log
    assert "resumed fetching" in run.log


async def test_memory_stays_flat_while_a_flood_drains(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Bounded memory: with at most 1,000 requests pending, the RSS of the worker process
    (from /proc) grows during the second half of a 100,000-request flood by less than a
    quarter of what it grew in the first half, plus 10 MB of slack: the state is
    bounded by max_pending, not by the volume drained."""
    run = await flood(pipeline, spawn_worker)

    assert len(run.results) == FLOOD
    half = run.rss_when_fused(0.5)
    first, second = half - run.baseline_mb, max(run.rss_mb) - half
    assert second < 0.25 * first + 10, run.summary()
