"""Fixtures and helpers for tests against the real local Kafka broker.

The broker is the one `make test` starts (deploy/kafka-dev/kafka.sh); when none
answers, the session starts one and stops it at the end. Every test gets topics of
its own (unique names), deleted afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka-dev" / "kafka.sh"

TopicFactory = Callable[..., Awaitable[list[str]]]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker (started here when none answers)."""
    port = int(os.environ.get("KAFKA_PORT", "9092"))
    started = False
    if not _port_open("127.0.0.1", port):
        subprocess.run([str(KAFKA_SH), "up"], check=True)
        started = True
    yield f"127.0.0.1:{port}"
    if started:
        subprocess.run([str(KAFKA_SH), "down"], check=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def make_topics(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """A factory: ``await make_topics(partitions, count=1, prefix=...)`` creates fresh topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def factory(
        partitions: int = 1, count: int = 1, prefix: str = "t", config: dict[str, str] | None = None
    ) -> list[str]:
        names = [unique(prefix) for _ in range(count)]
        await admin.create_topics(
            [NewTopic(n, partitions, 1, topic_configs=config or {}) for n in names]
        )
        created.extend(names)
        await wait_for_topics(admin, names)
        return names

    try:
        yield factory
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()


async def wait_for_topics(admin: AIOKafkaAdminClient, names: Sequence[str]) -> None:
    """Topic creation is asynchronous in KRaft: wait until metadata lists the topics."""
    for _ in range(100):
        described = await admin.describe_topics(list(names))
        if all(d.get("error_code", 0) == 0 and d.get("partitions") for d in described):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topics {names} did not appear")


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, bytes]] | None = None,
) -> list[Any]:
    """Send (key, value) records with the default (murmur2) partitioner; returns their metadata."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4_194_304
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers) for key, value in records
        ]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def produce_json(bootstrap: str, topic: str, events: Iterable[dict[str, Any]]) -> None:
    """Send prediction events as JSON, keyed by request_id."""
    await produce(bootstrap, topic, ((e["request_id"].encode(), orjson.dumps(e)) for e in events))


async def consume(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    isolation_level: str = "read_uncommitted",
    idle_s: float | None = None,
) -> list[Any]:
    """Read a topic from the beginning until ``expected`` records arrived (or the time
    runs out; then what arrived is returned and the test's own assertion says what is
    missing). With ``idle_s``, keep reading until nothing new came for that long, to
    see duplicates beyond ``expected``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        for _ in range(50):
            if partitions:
                break
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
            await asyncio.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions or ())])
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
                if records:
                    last_new = loop.time()
            if len(out) >= expected and (idle_s is None or loop.time() - last_new >= idle_s):
                break
        return out
    finally:
        await consumer.stop()


def decode_values(records: Iterable[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]
