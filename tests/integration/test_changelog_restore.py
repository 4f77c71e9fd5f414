"""The exactly-once restore reads the changelog on the real broker: every partition from
its beginning to its last stable offset, last write wins, a tombstone removes, an empty
partition restores nothing (worker/runtime/changelog.py ``read_changelog``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.kafka_fixtures import unique, wait_for_topics
from worker.config import Config, build_config
from worker.runtime.changelog import changelog_topic, read_changelog

pytestmark = [pytest.mark.kafka]


@pytest.fixture
async def config(kafka_bootstrap: str) -> AsyncIterator[Config]:
    """An exactly-once configuration whose changelog topic (3 partitions) exists, empty."""
    cfg = build_config(
        {
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "group_id": unique("restore"),
                "delivery": "exactly-once",
            },
            "fusion": {"labels": ["x", "y"]},
            "models": [{"name": "a"}, {"name": "b"}],
        }
    )
    topic = changelog_topic(cfg)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
        await wait_for_topics(admin, [topic])
        yield cfg
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def _write(bootstrap: str, topic: str, records: list[tuple[int, str, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for partition, key, value in records:
            await producer.send_and_wait(topic, value, key=key.encode(), partition=partition)
    finally:
        await producer.stop()


def _state(rid: str, n: int) -> bytes:
    return orjson.dumps({"request_id": rid, "n": n})


async def test_a_restore_reads_every_partition_from_its_beginning(
    config: Config, kafka_bootstrap: str
) -> None:
    """Partition 0 (writes, a rewrite, a tombstone) and partition 2 are restored whole,
    partition 1 (empty) restores nothing; read five times, the same each time (the
    reader must not start a partition at its end)."""
    topic = changelog_topic(config)
    await _write(
        kafka_bootstrap,
        topic,
        [
            (0, "r1", _state("r1", 1)),
            (0, "r2", _state("r2", 1)),
            (0, "r3", _state("r3", 1)),
            (0, "r2", None),
            (0, "r1", _state("r1", 2)),
            (2, "r4", _state("r4", 1)),
        ],
    )
    want = {
        0: {"r1": {"request_id": "r1", "n": 2}, "r3": {"request_id": "r3", "n": 1}},
        1: {},
        2: {"r4": {"request_id": "r4", "n": 1}},
    }
    for _ in range(5):
        assert await read_changelog(config, [0, 1, 2], lambda: None) == want
