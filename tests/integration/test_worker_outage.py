"""The broker goes away mid-stream and comes back: the worker waits, then loses nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    PrivateBroker,
    count_ids,
    make_events,
)
from tests.kafka_fixtures import consume, decode_values, produce_json

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_broker_down_for_10s_mid_stream_loses_nothing(
    private_broker: PrivateBroker, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The broker stops for 10 s while events stream; the worker keeps retrying, resumes
    when it returns, and every request is fused."""
    bootstrap = private_broker.bootstrap
    cfg, port = await private_broker.pipeline(
        tmp_path,
        "outage",
        2,
        join={"timeout_ms": 1000},
    )
    worker = spawn_worker(cfg, port)
    worker.wait_ready()
    events = make_events(2000, seed=9)

    await produce_json(bootstrap, "in", events[:3000])
    await asyncio.sleep(1.0)
    private_broker.run("down")
    await asyncio.sleep(10)
    private_broker.run("up")
    await produce_json(bootstrap, "in", events[3000:])
    results = decode_values(await consume(bootstrap, "out", 2000, timeout_s=120, idle_s=3))

    assert worker.proc is not None
    assert worker.proc.poll() is None, worker.logs()
    assert len(count_ids(results)) == 2000, worker.logs()


async def test_during_an_outage_the_worker_stays_live_and_stops_on_sigterm(
    private_broker: PrivateBroker, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Results fall due while the broker is away: the sink retries them, /healthz stays
    200 well past liveness_timeout_ms (waiting out an outage is not being stuck), and
    SIGTERM ends the worker within its shutdown budget, exit 0."""
    bootstrap = private_broker.bootstrap
    cfg, port = await private_broker.pipeline(
        tmp_path,
        "outage-live",
        2,
        join={"timeout_ms": 1500},
        kafka={"shutdown_timeout_ms": 4000},
        metrics={"liveness_timeout_ms": 2000},
    )
    worker = spawn_worker(cfg, port)
    worker.wait_ready()
    # Two of three models: the results are due at the deadline, when the broker is gone.
    events = [e for e in make_events(500, seed=10) if e["model"] != "distilbert"]
    await produce_json(bootstrap, "in", events)
    await asyncio.sleep(0.5)
    private_broker.run("down")

    statuses = []
    for _ in range(8):
        await asyncio.sleep(1.0)
        statuses.append(worker.get("/healthz")[0])
    started = time.monotonic()
    code = worker.terminate(timeout_s=30)
    took = time.monotonic() - started

    assert statuses == [200] * 8, worker.logs()
    assert code == 0, worker.logs()
    assert took < 4 + 5, worker.logs()  # the budget, plus interpreter and client shutdown
