"""``fusion-worker run`` on either event loop against the real broker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import make_events
from tests.kafka_fixtures import consume, produce

pytestmark = pytest.mark.kafka

# What depends on when the worker ran, not on what it fused.
TIMINGS = ("fused_ts", "latency_ms")


def fused(results: list[Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for r in results:
        doc = orjson.loads(r.value)
        for key in TIMINGS:
            doc.pop(key, None)
        out[doc["request_id"]] = doc
    return out


async def test_both_loops_fuse_the_same_results(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """The same 300 complete and 100 partial requests through a worker on uvloop (the
    default) and one on asyncio's loop, each on its own topics: each says its loop when
    it starts, and the fused results are the same but for their timings."""
    events = make_events(300, seed=41, prefix="c")
    events += [e for e in make_events(100, seed=42, prefix="p") if e["model"] != "distilbert"]
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    by_loop = {}
    for choice, logged in (("auto", "uvloop"), ("asyncio", "asyncio")):
        p: Pipeline = await pipeline(partitions=2)
        cfg = p.config(join={"timeout_ms": 300}, runtime={"event_loop": choice})
        worker = spawn_worker(cfg, p.port, name=choice)
        worker.wait_ready()
        assert f"event loop {logged}" in worker.logs()
        await produce(p.bootstrap, p.inputs[0], records)
        by_loop[logged] = fused(await consume(p.bootstrap, p.output, 400, timeout_s=60))
        assert worker.terminate() == 0
    assert len(by_loop["uvloop"]) == 400
    assert by_loop["uvloop"] == by_loop["asyncio"]
    statuses = [r["status"] for r in by_loop["uvloop"].values()]
    assert (statuses.count("complete"), statuses.count("partial")) == (300, 100)
