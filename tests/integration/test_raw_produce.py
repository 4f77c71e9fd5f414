"""Through the real broker: the latency generator's own produce requests
(bench/raw_produce.py) put each record in its partition with its key, value and
timestamp, in order, a batch too large for one request split over several; and a
partition the broker refuses, or the topic does not have, raises instead of losing the
records."""

from __future__ import annotations

import pytest

from bench import kit, raw_produce
from tests.kafka_fixtures import TopicFactory

PARTITIONS = 3
PER_PARTITION = 120


async def test_every_record_reaches_its_partition(
    kafka_bootstrap: str, make_topics: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ticks of records in every partition, batches of 4 KiB (so each tick's records
    take several requests), sent at once to a topic just created: read back, each
    partition holds every one of its records, with its key, value and tick's timestamp
    (a batch the new partition's leader refused at first is sent again, so the order
    within a partition may differ)."""
    monkeypatch.setattr(raw_produce, "BATCH_BYTES", 4096)
    (topic,) = await make_topics(partitions=PARTITIONS)
    producer = await raw_produce.RawProducer.connect(kafka_bootstrap, topic)
    sent: dict[int, list[tuple[bytes, bytes, int]]] = {p: [] for p in range(PARTITIONS)}
    try:
        for tick, ts in enumerate((1_764_000_000_000, 1_764_000_000_002)):
            for p in range(PARTITIONS):
                keys = [b"p%d-t%d-%03d" % (p, tick, i) for i in range(PER_PARTITION // 2)]
                values = [b"%s:" % k + b"x" * 150 for k in keys]
                producer.add(p, keys, values, ts)
                sent[p] += [(k, v, ts) for k, v in zip(keys, values, strict=True)]
            producer.send()
            producer.poll()
        producer.flush()
    finally:
        producer.close()
    assert producer.count == PARTITIONS * PER_PARTITION
    got: dict[int, list[tuple[bytes, bytes, int]]] = {p: [] for p in range(PARTITIONS)}
    async for r in kit.read_all(kafka_bootstrap, topic, committed_only=False):
        got[r.partition].append((r.key, r.value, r.timestamp))
    assert {p: sorted(rs) for p, rs in got.items()} == {p: sorted(rs) for p, rs in sent.items()}


async def test_a_refused_partition_raises(kafka_bootstrap: str, make_topics: TopicFactory) -> None:
    """A record over the topic's max.message.bytes is refused by the broker: ``flush``
    raises, naming the partition and the error."""
    (topic,) = await make_topics(partitions=1, config={"max.message.bytes": "1000"})
    producer = await raw_produce.RawProducer.connect(kafka_bootstrap, topic)
    try:
        producer.add(0, [b"k"], [b"v" * 2_000], 1_764_000_000_000)
        with pytest.raises(raw_produce.ProduceFailed, match=rf"{topic}\[0\]: .*TooLarge"):
            producer.flush()
    finally:
        producer.close()


async def test_a_partition_the_topic_lacks_raises(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """Records for a partition the topic does not have are refused when queued, not
    dropped when sent."""
    (topic,) = await make_topics(partitions=2)
    producer = await raw_produce.RawProducer.connect(kafka_bootstrap, topic)
    try:
        with pytest.raises(raw_produce.ProduceFailed, match=rf"{topic} has no partition 2"):
            producer.add(2, [b"k"], [b"v"], 1_764_000_000_000)
    finally:
        producer.close()
