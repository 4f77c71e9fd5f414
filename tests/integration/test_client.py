"""The client kit on the real broker: a refused event sends nothing, events are keyed as
the worker needs, and a gateway awaits fused results from a real worker process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import LABELS, MODELS
from tests.kafka_fixtures import TopicFactory, consume, decode_values, produce_json
from worker.client import FusedResults, InvalidPrediction, PredictionPublisher
from worker.errors import KafkaSetupError
from worker.murmur2 import partition_for

pytestmark = pytest.mark.kafka

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def fake_result(request_id: str, label: str = "positive") -> dict[str, Any]:
    """A fused result as the worker writes it (the fields a gateway reads)."""
    return {"request_id": request_id, "strategy": "soft_vote", "status": "complete", "label": label}


async def test_a_refused_event_sends_nothing(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """An invalid event raises InvalidPrediction and never reaches the topic: after it,
    only the valid marker event is there."""
    (topic,) = await make_topics(1, prefix="pred")
    async with PredictionPublisher(kafka_bootstrap, topic) as pub:
        with pytest.raises(InvalidPrediction):
            await pub.publish("bad", model="m1", probs=[0.5, 0.7])
        with pytest.raises(InvalidPrediction):
            await pub.publish("bad", model="m1", probs=[0.5, 0.5], traceparent="nope")
        await pub.publish("marker", model="m1", label="positive")
    records = await consume(kafka_bootstrap, topic, 1, timeout_s=20, idle_s=1.5)
    assert [r.key for r in records] == [b"marker"]


async def test_events_are_keyed_by_request_id_on_the_murmur2_partition(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """Every event is keyed by its request_id and lands on the partition of Kafka's
    default partitioner (murmur2, as the Java client), with its traceparent header."""
    (topic,) = await make_topics(4, prefix="pred")
    ids = [f"req-{i}" for i in range(40)]
    async with PredictionPublisher(kafka_bootstrap, topic) as pub:
        for rid in ids:
            await pub.publish(rid, model="m1", probs=[0.2, 0.8], traceparent=TRACEPARENT)
    records = await consume(kafka_bootstrap, topic, len(ids), timeout_s=30)
    assert sorted(r.key.decode() for r in records) == sorted(ids)
    for r in records:
        assert r.partition == partition_for(r.key, 4)
        assert dict(r.headers)["traceparent"] == TRACEPARENT.encode()
        assert orjson.loads(r.value)["request_id"] == r.key.decode()


async def test_publish_then_await_the_fused_result_of_a_real_worker(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Three model services publish through the kit, the worker process fuses, the gateway
    gets each request's complete result (soft vote of the three)."""
    p: Pipeline = await pipeline(partitions=4)
    spawn_worker(p.config(), p.port).wait_ready()
    probs = {
        "bert-base": [0.1, 0.2, 0.7],
        "roberta": [0.6, 0.3, 0.1],
        "distilbert": [0.2, 0.2, 0.6],
    }
    ids = [f"rt-{i}" for i in range(20)]
    async with FusedResults(p.bootstrap, p.output) as results:
        waiting = [asyncio.create_task(results.get(rid, timeout_s=60)) for rid in ids]
        async with PredictionPublisher(p.bootstrap, p.inputs[0]) as pub:
            for rid in ids:
                for model in MODELS:
                    await pub.publish(rid, model=model, probs=probs[model], labels=list(LABELS))
        fused = await asyncio.gather(*waiting)
    assert [f["request_id"] for f in fused] == ids
    for f in fused:
        assert f["status"] == "complete"
        assert f["label"] == "positive"
        assert f["probs"] == pytest.approx([0.3, 0.7 / 3, 1.4 / 3], abs=1e-12)


async def test_get_times_out_and_leaves_no_waiter(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """With no result, get raises TimeoutError after timeout_s and forgets the waiter."""
    (topic,) = await make_topics(2, prefix="fused")
    async with FusedResults(kafka_bootstrap, topic) as results:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match="never"):
            await results.get("never", timeout_s=0.3)
        assert 0.3 <= loop.time() - started < 5
        assert results.waiting == 0


async def test_results_before_start_are_not_seen(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """FusedResults listens from its start on: an older result times out, a newer one is got."""
    (topic,) = await make_topics(2, prefix="fused")
    await produce_json(kafka_bootstrap, topic, [fake_result("old")])
    async with FusedResults(kafka_bootstrap, topic) as results:
        await produce_json(kafka_bootstrap, topic, [fake_result("new")])
        assert (await results.get("new", timeout_s=20))["request_id"] == "new"
        with pytest.raises(TimeoutError):
            await results.get("old", timeout_s=0.5)


async def test_unclaimed_results_are_bounded_by_count(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """Results nobody asked for are kept up to max_results; older ones are forgotten."""
    (topic,) = await make_topics(1, prefix="fused")
    async with FusedResults(kafka_bootstrap, topic, max_results=3) as results:
        await produce_json(kafka_bootstrap, topic, [fake_result(f"r{i}") for i in range(6)])
        assert (await results.get("r5", timeout_s=20))["request_id"] == "r5"
        assert results.held == 3
        for rid in ("r3", "r4"):
            assert (await results.get(rid, timeout_s=0.1))["request_id"] == rid
        with pytest.raises(TimeoutError):
            await results.get("r2", timeout_s=0.3)


async def test_unclaimed_results_are_bounded_by_age(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """A result older than max_age_s is forgotten."""
    (topic,) = await make_topics(1, prefix="fused")
    async with FusedResults(kafka_bootstrap, topic, max_age_s=0.5) as results:
        await produce_json(kafka_bootstrap, topic, [fake_result("a")])
        await results.get("a", timeout_s=20)
        await asyncio.sleep(0.8)
        with pytest.raises(TimeoutError):
            await results.get("a", timeout_s=0.2)
        assert results.held == 0


async def test_two_gateways_and_two_waiters_all_get_the_result(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """Two FusedResults instances (no consumer group) each see every result, and two
    concurrent waiters on one of them both get it."""
    (topic,) = await make_topics(3, prefix="fused")
    async with (
        FusedResults(kafka_bootstrap, topic) as one,
        FusedResults(kafka_bootstrap, topic) as two,
    ):
        waiting = [
            asyncio.create_task(one.get("shared", timeout_s=20)),
            asyncio.create_task(one.get("shared", timeout_s=20)),
            asyncio.create_task(two.get("shared", timeout_s=20)),
        ]
        await asyncio.sleep(0.1)
        assert one.waiting == 2
        await produce_json(kafka_bootstrap, topic, [fake_result("shared", "neutral")])
        got = await asyncio.gather(*waiting)
    assert [g["label"] for g in got] == ["neutral"] * 3


async def test_a_missing_output_topic_is_a_setup_error(kafka_bootstrap: str) -> None:
    """Listening to a topic that does not exist fails at start with KafkaSetupError."""
    results = FusedResults(kafka_bootstrap, "no-such-topic-xyz", metadata_timeout_s=1.0)
    with pytest.raises(KafkaSetupError, match="no-such-topic-xyz"):
        await results.start()
    await results.stop()


async def test_a_result_is_the_record_json_unchanged(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """What FusedResults hands out is the record's JSON object, unchanged."""
    (topic,) = await make_topics(1, prefix="fused")
    result = {**fake_result("x"), "probs": [0.1, 0.9], "members": {"m": {"weight": 1.0}}}
    async with FusedResults(kafka_bootstrap, topic) as results:
        await produce_json(kafka_bootstrap, topic, [result])
        got = await results.get("x", timeout_s=20)
    assert got == decode_values(await consume(kafka_bootstrap, topic, 1))[0]


async def test_a_result_published_right_after_start_is_seen(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """start() returns only once the end offsets are fixed: a result a ready producer
    sends the moment start() returns is not skipped by a later offset reset."""
    (topic,) = await make_topics(4, prefix="fused")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        for i in range(5):
            async with FusedResults(kafka_bootstrap, topic) as results:
                rid = f"quick-{i}"
                await producer.send_and_wait(
                    topic, orjson.dumps(fake_result(rid)), key=rid.encode()
                )
                assert (await results.get(rid, timeout_s=10))["request_id"] == rid
    finally:
        await producer.stop()
