"""Late events on the real broker: an event whose request was already fused is never
fused again; with ``late_topic`` set it is forwarded there unchanged and counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import make_events, metric
from tests.kafka_fixtures import TopicFactory, consume, decode_values, produce, produce_json

pytestmark = pytest.mark.kafka

N = 50


async def test_late_event_is_forwarded_unchanged_and_counted(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory, make_topics: TopicFactory
) -> None:
    """50 requests are fused partial at their deadline without distilbert; distilbert's
    events for them, sent afterwards with a header, land on the late topic with the same
    key, value and headers, are counted as late (events and output records), and no
    request gets a second result."""
    p: Pipeline = await pipeline(partitions=2)
    (late,) = await make_topics(2, prefix="late")
    cfg = p.config(
        kafka={"late_topic": late},
        # Remember fused ids for a minute: the late events must be recognised as late.
        join={"timeout_ms": 300, "fused_memory_ms": 60_000},
    )
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    events = make_events(N, seed=61, prefix="late")
    early = [e for e in events if e["model"] != "distilbert"]
    stragglers = [e for e in events if e["model"] == "distilbert"]

    await produce_json(p.bootstrap, p.inputs[0], early)
    first = decode_values(await consume(p.bootstrap, p.output, N, timeout_s=30))
    assert len(first) == N
    assert {r["status"] for r in first} == {"partial"}

    headers = [
        ("x-origin", b"straggler"),
        ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
    ]
    sent = {e["request_id"].encode(): orjson.dumps(e) for e in stragglers}
    await produce(p.bootstrap, p.inputs[0], sent.items(), headers=headers)
    forwarded = await consume(p.bootstrap, late, N, timeout_s=30)
    outputs = await consume(p.bootstrap, p.output, N, timeout_s=30, idle_s=2)

    assert len(forwarded) == N
    assert {r.key: r.value for r in forwarded} == sent
    assert all(list(r.headers) == headers for r in forwarded)
    assert len(outputs) == N, "a late event was fused again"

    text = ""
    for _ in range(50):  # the tallies are counted right after the records are queued
        _, text = worker.get("/metrics")
        if metric(text, "fusion_output_records_total", topic=late) == N:
            break
        await asyncio.sleep(0.1)
    assert metric(text, "fusion_output_records_total", topic=late) == N
    assert metric(text, "fusion_events_total", model="distilbert", outcome="late") == N
    assert metric(text, "fusion_events_total", model="distilbert", outcome="accepted") == 0
