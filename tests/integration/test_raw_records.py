"""Through the real broker, a consumer that hands over aiokafka's parsed records
(worker/runtime/raw_records.py) reads what a plain consumer reads: the same records at
the same offsets, an aborted transaction skipped under ``read_committed``, every batch
checked by the compiled CRC check; where no transaction was aborted, the compiled
parser's runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.kafka_fixtures import TopicFactory, unique
from worker import native
from worker.runtime.raw_records import install

COMMITTED = 100  # records read under read_committed: 50 + 20 + 30


async def write(bootstrap: str, topic: str, abort: bool = True) -> None:
    """50 plain records, a committed transaction of 20, an aborted one of 20 (committed:
    ``abort`` False), 30 plain."""
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=unique("raw"))
    await plain.start()
    await txn.start()
    try:
        headers = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
        await asyncio.gather(
            *[
                await plain.send(topic, b"v%d" % i, key=b"k%d" % i, headers=headers)
                for i in range(50)
            ]
        )
        for commit in (True, not abort):
            await txn.begin_transaction()
            for i in range(20):
                await txn.send(topic, b"t%d-%d" % (commit, i), key=b"t%d" % i)
            await (txn.commit_transaction() if commit else txn.abort_transaction())
        await asyncio.gather(*[await plain.send(topic, b"w%d" % i) for i in range(30)])
    finally:
        await txn.stop()
        await plain.stop()


async def read(bootstrap: str, topic: str, raw: bool) -> tuple[list[Any], dict[int, int], set[str]]:
    """Every record of ``topic`` (partition, offset, timestamp, key, value, headers),
    the positions after them, and the class names of the records handed over."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        if raw:
            assert install(consumer)
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        rows: list[Any] = []
        kinds: set[str] = set()
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200, max_records=7)
            for tp, records in batch.items():
                kinds |= {type(r).__name__ for r in records}
                rows += [
                    (tp.partition, r.offset, r.timestamp, r.key, r.value, tuple(r.headers))
                    for r in records
                ]
            if len(rows) >= COMMITTED and not batch:
                break
        positions = {tp.partition: await consumer.position(tp) for tp in tps}
        return sorted(rows), positions, kinds
    finally:
        await consumer.stop()


async def test_parsed_records_are_what_a_plain_consumer_reads(
    kafka_bootstrap: str, make_topics: TopicFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same records (offset, timestamp, key, value, headers) and the same positions
    as a plain consumer, the aborted transaction's records skipped; aiokafka's parsed
    records, not ``ConsumerRecord``s; the broker's batches checked by the compiled CRC
    check, which finds them whole."""
    (topic,) = await make_topics(partitions=2)
    await write(kafka_bootstrap, topic)
    check = native.first_corrupt_batch
    assert check is not None
    verdicts: list[int | None] = []

    def counted(data: bytes) -> int | None:
        verdicts.append(check(data))
        return verdicts[-1]

    monkeypatch.setattr(native, "first_corrupt_batch", counted)

    ours, positions, kinds = await read(kafka_bootstrap, topic, raw=True)
    assert verdicts
    assert set(verdicts) == {-1}
    theirs, their_positions, their_kinds = await read(kafka_bootstrap, topic, raw=False)

    assert len(ours) == COMMITTED
    assert ours == theirs
    assert not any(row[4].startswith(b"t0-") for row in ours)  # the aborted transaction's
    assert positions == their_positions
    assert kinds == {"DefaultRecord"}
    assert their_kinds == {"ConsumerRecord"}


async def test_runs_of_the_compiled_parser_are_what_a_plain_consumer_reads(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """With no transaction aborted, the fetched partitions are the compiled parser's:
    the same records (the transactions' control batches skipped) at the same positions
    as a plain consumer's."""
    if native.Fetched is None:
        pytest.skip("the extension is not built")
    (topic,) = await make_topics(partitions=2)
    await write(kafka_bootstrap, topic, abort=False)
    ours, positions, kinds = await read(kafka_bootstrap, topic, raw=True)
    theirs, their_positions, _ = await read(kafka_bootstrap, topic, raw=False)
    assert len(ours) == COMMITTED + 20
    assert ours == theirs
    assert positions == their_positions
    assert kinds == {"FetchedRecord"}
