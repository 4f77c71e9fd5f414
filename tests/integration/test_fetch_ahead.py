"""Through the real broker: after a ``getmany`` that took every buffered record, aiokafka's
fetcher has written no request yet, and ``fetch_ahead`` (worker/runtime/fetch_ahead.py)
lets it write its next one before the step runs."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka_fixtures import TopicFactory
from worker.runtime.fetch_ahead import fetch_ahead

RECORDS = 20


def fetch_written(consumer: AIOKafkaConsumer) -> bool:
    """Whether a fetch request is on a connection, waiting for its response (aiokafka's
    connections keep each request written until its response is read)."""
    return any(
        type(request).__name__.startswith("FetchRequest")
        for conn in consumer._client._conns.values()
        for _, request, _ in conn._requests
    )


async def fill(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, b"v%d" % i) for i in range(RECORDS)])
    finally:
        await producer.stop()


async def test_the_next_fetch_is_written_after_fetch_ahead(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """Right after ``getmany`` drained the buffer no fetch request is written (the step
    would run before one is); after ``fetch_ahead`` one is."""
    (topic,) = await make_topics(partitions=1)
    await fill(kafka_bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        got = 0
        while got < RECORDS:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records within 5 s"
            got += sum(len(records) for records in batch.values())
            written_after_getmany = fetch_written(consumer)
            await fetch_ahead()
            written_after_fetch_ahead = fetch_written(consumer)
        assert got == RECORDS
        assert not written_after_getmany
        assert written_after_fetch_ahead
    finally:
        await consumer.stop()
