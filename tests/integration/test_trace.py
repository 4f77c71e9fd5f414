"""The trace header round trip on the real broker: model services publish with W3C
``traceparent`` headers through the client kit, the worker process fuses, and the fused
record continues the first member's trace and lists every member's trace id."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import LABELS, MODELS
from tests.kafka_fixtures import consume
from worker.client import FusedResults, PredictionPublisher
from worker.tracecontext import span_id_for

pytestmark = pytest.mark.kafka

PROBS = {"bert-base": [0.1, 0.2, 0.7], "roberta": [0.6, 0.3, 0.1], "distilbert": [0.2, 0.2, 0.6]}


def trace_of(i: int, model: str) -> str:
    return f"{i + 1:08x}{MODELS.index(model) + 1:024x}"


def traceparent(i: int, model: str) -> str:
    return f"00-{trace_of(i, model)}-{MODELS.index(model) + 1:016x}-01"


async def test_the_fused_record_continues_the_first_members_trace(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Every member but the last sends its own trace: the fused record's traceparent has
    the first member's trace id and flags and the documented span id; the result lists
    each traced member's trace id, and the gateway's FusedResults gets that result."""
    p: Pipeline = await pipeline(partitions=2)
    spawn_worker(p.config(), p.port).wait_ready()
    ids = [f"tr-{i}" for i in range(10)]
    traced = MODELS[:-1]
    async with FusedResults(p.bootstrap, p.output) as results:
        waiting = [asyncio.create_task(results.get(rid, timeout_s=60)) for rid in ids]
        async with PredictionPublisher(p.bootstrap, p.inputs[0]) as pub:
            for i, rid in enumerate(ids):
                for model in MODELS:
                    await pub.publish(
                        rid,
                        model=model,
                        probs=PROBS[model],
                        labels=list(LABELS),
                        traceparent=traceparent(i, model) if model in traced else None,
                    )
        got = await asyncio.gather(*waiting)
    records = await consume(p.bootstrap, p.output, len(ids), timeout_s=60)
    by_id = {r.key.decode(): r for r in records}
    assert sorted(by_id) == sorted(ids)
    for i, (rid, result) in enumerate(zip(ids, got, strict=True)):
        first = trace_of(i, MODELS[0])
        headers = dict(by_id[rid].headers)
        assert headers["traceparent"] == f"00-{first}-{span_id_for(rid, first)}-01".encode()
        assert orjson.loads(by_id[rid].value) == result
        members = result["members"]
        assert {m: members[m].get("trace_id") for m in MODELS} == {
            **{m: trace_of(i, m) for m in traced},
            MODELS[-1]: None,
        }
