"""Exactly-once on the real broker: crashes, scale-out and scale-in, a broker restart and
restored pending state — 0 lost, 0 duplicates, read with read_committed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.chaos import compare, reference, run_chaos
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import (
    EOS,
    PrivateBroker,
    count_ids,
    free_port,
    make_events,
    metric,
    read_committed,
    wait_committed,
)
from tests.kafka_fixtures import consume, decode_values, produce, produce_json

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_kill_9_five_times_loses_and_repeats_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """kill -9 at random moments, 5 times, during 20,000 requests x 3 models, restarted each
    time: every request is in the output exactly once, with the uninterrupted values."""
    report = await run_chaos(kafka_bootstrap, tmp_path, requests=20_000, kills=5)
    print(report)
    assert (report.lost, report.duplicates, report.mismatched) == (0, 0, 0), str(report)


async def test_scale_out_and_in_loses_and_repeats_nothing(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """One worker, two more joining mid-stream, then one stopped with SIGTERM and one
    killed with -9: every request exactly once."""
    p: Pipeline = await pipeline(partitions=6)
    ports = [p.port, free_port(), free_port()]
    configs = [
        p.config(f"w{i}.toml", port=ports[i], kafka=EOS, join={"timeout_ms": 60_000})
        for i in range(3)
    ]
    events = make_events(6000, seed=12)
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    chunks = [records[i : i + 1500] for i in range(0, len(records), 1500)]  # 12 chunks

    a = spawn_worker(configs[0], ports[0], "a")
    a.wait_ready()
    for chunk in chunks[:3]:
        await produce(p.bootstrap, p.inputs[0], chunk)
    b = spawn_worker(configs[1], ports[1], "b")
    c = spawn_worker(configs[2], ports[2], "c")
    for chunk in chunks[3:6]:
        await produce(p.bootstrap, p.inputs[0], chunk)
        await asyncio.sleep(0.5)
    b.wait_ready()
    c.wait_ready()
    for chunk in chunks[6:9]:
        await produce(p.bootstrap, p.inputs[0], chunk)
    assert b.terminate() == 0
    for chunk in chunks[9:11]:
        await produce(p.bootstrap, p.inputs[0], chunk)
    c.kill()
    await produce(p.bootstrap, p.inputs[0], chunks[11])

    results = decode_values(await read_committed(p.bootstrap, p.output, 6000))
    cfg = configs[0]
    lost, duplicates, mismatched = compare(results, reference(cfg, events))
    assert (lost, duplicates, mismatched) == (0, 0, 0), a.logs()


async def test_broker_restart_mid_stream_loses_and_repeats_nothing(
    private_broker: PrivateBroker, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The broker restarts while events stream: every request exactly once."""
    broker = private_broker
    cfg, port = await broker.pipeline(
        tmp_path, "eos-restart", 4, kafka=EOS, join={"timeout_ms": 60_000}
    )
    worker = spawn_worker(cfg, port)
    worker.wait_ready()
    events = make_events(3000, seed=13)
    await produce_json(broker.bootstrap, "in", events[:4500])
    await asyncio.sleep(1)
    broker.run("down")
    await asyncio.sleep(3)
    broker.run("up")
    await produce_json(broker.bootstrap, "in", events[4500:])
    results = decode_values(await read_committed(broker.bootstrap, "out", 3000, timeout_s=150))
    lost, duplicates, mismatched = compare(results, reference(cfg, events))
    assert (lost, duplicates, mismatched) == (0, 0, 0), worker.logs()


async def test_pending_state_is_restored_from_the_changelog(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Requests half-complete at a kill -9 are completed after the restart from the
    changelog: the restarted worker reads only the missing model's events."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(kafka=EOS, join={"timeout_ms": 60_000})
    events = make_events(500, seed=14)
    first_two = [e for e in events if e["model"] != "distilbert"]
    third = [e for e in events if e["model"] == "distilbert"]
    worker = spawn_worker(cfg, p.port, "first")
    worker.wait_ready()
    await produce_json(p.bootstrap, p.inputs[0], first_two)

    changelog = f"{p.group}-pending-changelog"
    logged = await consume(
        p.bootstrap, changelog, 500, timeout_s=30, isolation_level="read_committed"
    )
    assert len({r.key for r in logged}) == 500
    await wait_committed(p.bootstrap, p.group, p.inputs[0], len(first_two), worker)
    worker.kill()

    second = spawn_worker(cfg, p.port, "second")
    second.wait_ready()
    await produce_json(p.bootstrap, p.inputs[0], third)
    results = decode_values(await read_committed(p.bootstrap, p.output, 500))

    assert len(count_ids(results)) == 500
    assert {r["status"] for r in results} == {"complete"}
    assert all(len(r["members"]) == 3 for r in results)
    _, text = second.get("/metrics")
    assert metric(text, "fusion_events_total", outcome="accepted") == len(third), re.findall(
        r"fusion_events_total.*", text
    )
