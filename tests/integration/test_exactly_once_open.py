"""Exactly-once on the real broker: partitions are opened (producers, changelog,
positions) from the assignment callback, not once the fetch that was under way when the
group assigned them has timed out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import EOS, make_events
from tests.kafka_fixtures import consume, produce

pytestmark = [pytest.mark.kafka]

FETCH_TIMEOUT_MS = 30_000
WITHIN_S = 15.0


async def test_assigned_partitions_open_before_the_fetch_under_way_times_out(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """With a 30 s fetch timeout, results of events already in the input are committed
    within 15 s of the start: the first fetch, begun before the assignment, does not
    hold the new partitions paused until it times out."""
    p: Pipeline = await pipeline(partitions=2)
    events = make_events(200, seed=5)
    await produce(
        p.bootstrap, p.inputs[0], [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    )
    worker = spawn_worker(p.config(kafka={**EOS, "fetch_timeout_ms": FETCH_TIMEOUT_MS}), p.port)
    first = await consume(
        p.bootstrap, p.output, 1, timeout_s=WITHIN_S, isolation_level="read_committed"
    )
    # consume gives up after WITHIN_S, well inside the fetch timeout: anything read was
    # committed before the first fetch could have timed out.
    assert first, f"nothing committed within {WITHIN_S:.0f}s:\n{worker.logs()}"
