"""Exactly-once on the real broker: results fused while the input is quiet are committed
when the commit falls due, not when the fetch the loop waits in times out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import EOS, make_events
from tests.kafka_fixtures import consume, produce

pytestmark = [pytest.mark.kafka]

COMMIT_INTERVAL_MS = 2_000
FETCH_TIMEOUT_MS = 60_000
WITHIN_S = 20.0


async def test_a_result_fused_between_commits_is_committed_when_the_commit_falls_due(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """The first request is committed at once (the first commit is due at the start);
    the second, published as soon as the first is readable, is fused before the next
    commit is due and then nothing arrives: it is readable within 20 s, though the
    fetch the loop waits in would time out only after 60 s."""
    p: Pipeline = await pipeline(partitions=1)
    events = make_events(2, seed=7)  # request by request, every model's event
    first, second = events[:3], events[3:]
    worker = spawn_worker(
        p.config(
            kafka={
                **EOS,
                "commit_interval_ms": COMMIT_INTERVAL_MS,
                "fetch_timeout_ms": FETCH_TIMEOUT_MS,
            }
        ),
        p.port,
    )

    async def publish(events: list[dict[str, Any]]) -> None:
        pairs = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
        await produce(p.bootstrap, p.inputs[0], pairs)

    await publish(first)
    seen = await consume(p.bootstrap, p.output, 1, timeout_s=60, isolation_level="read_committed")
    assert len(seen) == 1, f"the first request was not committed:\n{worker.logs()}"
    await publish(second)
    both = await consume(
        p.bootstrap, p.output, 2, timeout_s=WITHIN_S, isolation_level="read_committed"
    )
    late = f"the second request was not committed within {WITHIN_S:.0f}s"
    assert len(both) == 2, f"{late}:\n{worker.logs()}"
