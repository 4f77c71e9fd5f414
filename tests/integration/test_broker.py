"""The local broker is real Apache Kafka: keyed records land where Java's partitioner puts them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.kafka_fixtures import REPO, TopicFactory, consume, produce

JAVA_PARTITIONER = Path(__file__).with_name("Murmur2Partitions.java")
LIBS = REPO / ".cache" / "kafka-dev" / "libs"


def java_partitions(keys: list[str], partitions: int) -> list[int]:
    """The partitions Kafka's own Java client computes for ``keys`` (single-file java launch)."""
    out = subprocess.run(
        ["java", "-cp", f"{LIBS}/*", str(JAVA_PARTITIONER), str(partitions)],
        input="\n".join(keys) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(line) for line in out.stdout.split()]


async def test_keyed_records_round_trip_in_murmur2_partitions(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """10,000 keyed records into 4 partitions all come back, each in the partition that
    the Java client's default (murmur2) partitioner gives for its key."""
    (topic,) = await make_topics(partitions=4)
    keys = [f"request-{i}" for i in range(10_000)]
    await produce(kafka_bootstrap, topic, ((k.encode(), k.encode()) for k in keys))

    records = await consume(kafka_bootstrap, topic, expected=len(keys))

    assert sorted(r.key.decode() for r in records) == sorted(keys)
    expected = dict(zip(keys, java_partitions(keys, 4), strict=True))
    wrong = [r.key for r in records if r.partition != expected[r.key.decode()]]
    assert wrong == []
    assert {r.partition for r in records} == {0, 1, 2, 3}
