"""A fused result too large for the output topic is never published with a null value
(a tombstone on a compacted topic): it goes to the DLQ as ``too_large``, keyed by its
request_id, and is counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import make_events, metric
from tests.kafka_fixtures import TopicFactory, consume, produce

pytestmark = pytest.mark.kafka


async def test_a_result_over_the_output_limit_goes_to_the_dlq_as_too_large(
    kafka_bootstrap: str,
    make_topics: TopicFactory,
    tmp_path: Path,
    spawn_worker: WorkerFactory,
) -> None:
    """One request's result (a 4 kB model_version) is over the output topic's
    max.message.bytes: the other results are published, that one is a too_large dead
    letter keyed by its request_id with the result as value, and no output has a null
    value."""
    ins = await make_topics(1, prefix="in")
    (out,) = await make_topics(1, prefix="out", config={"max.message.bytes": "3000"})
    (dlq,) = await make_topics(1, prefix="dlq")
    p = Pipeline(tmp_path, kafka_bootstrap, ins, out, dlq)
    cfg = p.config(join={"timeout_ms": 60_000})
    events = make_events(20, seed=5)
    for e in events:
        if e["request_id"] == events[0]["request_id"]:
            e["model_version"] = "v" * 4000
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    await produce(
        p.bootstrap, p.inputs[0], [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    )

    results = await consume(p.bootstrap, p.output, 19, timeout_s=60, idle_s=2)
    dead = await consume(p.bootstrap, p.dlq, 1, timeout_s=60)

    big = events[0]["request_id"]
    assert all(r.value is not None for r in results)
    assert sorted(r.key.decode() for r in results) == sorted(
        {e["request_id"] for e in events} - {big}
    )
    assert len(dead) == 1, worker.logs()
    headers = dict(dead[0].headers)
    assert headers["error"] == b"too_large"
    assert headers["output_topic"] == p.output.encode()
    assert dead[0].key == big.encode()
    assert orjson.loads(dead[0].value)["request_id"] == big
    await asyncio.sleep(0.5)
    _, text = worker.get("/metrics")
    assert metric(text, "fusion_dlq_total", reason="too_large") == 1
