"""Shared pieces of the end-to-end benchmarks: the event set, topics, a fast loader,
watching an output topic fill up and reading it back (the processes: bench/procs.py).

Everything runs against a real broker; every topic and group name carries a fresh
suffix and the topics are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.murmur2 import partition_for

MODELS = ("bert-base", "roberta-large", "distilbert")
LABELS = ("negative", "neutral", "positive")
WEIGHTS = (0.3, 0.4, 0.3)
# Requests per block: in each block every model's events come one model after the other,
# so a request waits for about two blocks' worth of events (models answer at different
# speeds), and the join holds about this many requests at a time.
BLOCK = 1000
# read_all gives up short of the end offsets only after this long with nothing new.
STUCK_S = 30.0
TS0 = 1_764_000_000_000


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


# -- the events ------------------------------------------------------------------------


def event_value(rid: str, model: str, ts: int, probs: Sequence[float]) -> bytes:
    """One prediction event of about 200 bytes (three labels, version and trace id)."""
    return orjson.dumps(
        {
            "request_id": rid,
            "model": model,
            "ts": ts,
            "probs": probs,
            "model_version": f"{model}-2025.06",
            "trace_id": rid[-16:] * 2,
        }
    )


def request_id(run: str, i: int) -> str:
    return f"{run}-{i:09d}"


def random_probs(rng: np.random.Generator, n: int) -> list[list[float]]:
    """``n`` probability vectors over the labels, rounded to 6 digits (sum within 1e-5)."""
    p = rng.dirichlet(np.ones(len(LABELS)), size=n).round(6)
    p[:, -1] = (1.0 - p[:, :-1].sum(axis=1)).round(6)
    out: list[list[float]] = np.abs(p).tolist()
    return out


def events(
    n_requests: int,
    run: str,
    models: Sequence[str] = MODELS,
    seed: int = 7,
    start: int = 0,
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every model's event for requests ``start .. start+n-1``, block
    by block (see BLOCK). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    for b in range(start, start + n_requests, BLOCK):
        ids = range(b, min(b + BLOCK, start + n_requests))
        keys = [request_id(run, i).encode() for i in ids]
        for model in models:
            probs = random_probs(rng, len(keys))
            for i, key, p in zip(ids, keys, probs, strict=True):
                yield key, event_value(key.decode(), model, TS0 + i, p)


# -- topics ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def topics(
    bootstrap: str, specs: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> AsyncIterator[list[str]]:
    """Create fresh topics {name: partitions}, with ``configs`` {name: {key: value}}
    where given; delete them (and nothing else) on exit."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    names = list(specs)
    configs = configs or {}
    try:
        await admin.create_topics(
            [NewTopic(t, n, 1, topic_configs=configs.get(t, {})) for t, n in specs.items()]
        )
        await _wait_listed(admin, names)
        yield names
    finally:
        with contextlib.suppress(Exception):
            await admin.delete_topics(names)
        await admin.close()


async def create_topics(bootstrap: str, specs: dict[str, int]) -> None:
    """Create topics {name: partitions} and wait until the broker lists them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, n, 1) for t, n in specs.items()])
        await _wait_listed(admin, list(specs))
    finally:
        await admin.close()


async def _wait_listed(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    for _ in range(100):
        described = await admin.describe_topics(names)
        if all(d.get("error_code", 0) == 0 and d.get("partitions") for d in described):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topics {names} did not appear")


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics (those of one run, the exactly-once changelog)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()


# -- loading ---------------------------------------------------------------------------


def fast_producer(bootstrap: str, **kw: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
        **kw,
    )


class BatchWriter:
    """Records into per-partition batches (``create_batch``/``send_batch``), partitioned
    as Kafka's default partitioner does (murmur2 of the key): no coroutine per record."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: int) -> None:
        """aiokafka's own batches, so that the passthrough baseline stays a plain aiokafka
        client."""
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self._builders: dict[int, Any] = {}
        self._futures: list[asyncio.Future[Any]] = []
        self.count = 0

    async def add(self, key: bytes, value: bytes, timestamp_ms: int | None = None) -> None:
        await self.add_to(partition_for(key, self.partitions), key, value, timestamp_ms)

    async def add_to(
        self, p: int, key: bytes, value: bytes, timestamp_ms: int | None = None
    ) -> None:
        """``add`` to partition ``p``, which the caller computed for ``key`` (once for
        all the events of a request)."""
        builder = self._builders.get(p)
        if builder is None:
            builder = self._builders[p] = self.producer.create_batch()
        if builder.append(key=key, value=value, timestamp=timestamp_ms) is None:
            await self._send(p, builder)
            builder = self._builders[p] = self.producer.create_batch()
            builder.append(key=key, value=value, timestamp=timestamp_ms)
        self.count += 1

    async def _send(self, p: int, builder: Any) -> None:
        self._futures.append(await self.producer.send_batch(builder, self.topic, partition=p))

    async def send_pending(self) -> None:
        """Hand every open batch to the producer (without waiting for the broker)."""
        builders, self._builders = self._builders, {}
        for p, builder in builders.items():
            if builder.record_count():
                await self._send(p, builder)

    async def flush(self) -> None:
        await self.send_pending()
        futures, self._futures = self._futures, []
        await asyncio.gather(*futures)


async def load(
    bootstrap: str, topic: str, partitions: int, records: Iterable[tuple[bytes, bytes]]
) -> tuple[int, float]:
    """Write ``records`` as fast as the client allows; returns (count, seconds)."""
    producer = fast_producer(bootstrap)
    await producer.start()
    start = time.perf_counter()
    try:
        writer = BatchWriter(producer, topic, partitions)
        for key, value in records:
            await writer.add(key, value)
        await writer.flush()
    finally:
        await producer.stop()
    return writer.count, time.perf_counter() - start


# -- reading the output ----------------------------------------------------------------


def reader(bootstrap: str, committed_only: bool = True, **kw: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if committed_only else "read_uncommitted",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **kw,
    )


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The topic's partitions (asking the broker for metadata until it knows them)."""
    for _ in range(100):
        known = consumer.partitions_for_topic(topic)
        if known:
            return [TopicPartition(topic, p) for p in sorted(known)]
        consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no metadata for topic {topic}")


async def end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    """The sum of the end offsets (read_committed: the last stable offsets)."""
    ends = await consumer.end_offsets(tps)
    return int(sum(ends.values()))


@dataclass
class Filled:
    """When an output topic filled up (monotonic times; None: not within the timeout)."""

    first: float | None  # the first result became readable
    done: float | None  # the end offsets reached their final value
    end: int  # that value
    first_sample: float = float("nan")  # sample() when the first result was seen
    last_sample: float = float("nan")  # sample() when the end offsets last moved (done)


async def wait_filled(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float,
    settle_s: float = 1.0,
    poll_s: float = 0.05,
    sample: Callable[[], float] | None = None,
) -> Filled:
    """Poll the topic's (last stable) end offsets until they reach ``expected`` records
    and stop moving for ``settle_s``. ``sample`` (e.g. the process's CPU time) is
    taken when the first result is seen and whenever the end offsets move: the first
    and the last of those (the one at ``done``) are kept.

    Under exactly-once the end offsets also count one commit marker per transaction and
    partition, so they pass ``expected`` a little before every result is readable; the
    time taken is when the end offsets reached their final value, which includes every
    commit marker, so it is the moment the last result became readable.
    """
    consumer = reader(bootstrap)
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        deadline = time.monotonic() + timeout_s
        value, since = -1, time.monotonic()
        first: float | None = None
        first_sample = last_sample = float("nan")
        while time.monotonic() < deadline:
            now = time.monotonic()
            current = await end_offsets(consumer, tps)
            if current and first is None:
                first = now
                first_sample = sample() if sample is not None else float("nan")
            if current != value:
                value, since = current, now
                if first is not None and sample is not None:
                    last_sample = sample()
            elif value >= expected and now - since >= settle_s:
                return Filled(first, since, value, first_sample, last_sample)
            await asyncio.sleep(poll_s)
        return Filled(first, None, value, first_sample, last_sample)
    finally:
        await consumer.stop()


@dataclass
class Output:
    """What an output topic holds: results by request id, with record timestamps."""

    records: int = 0
    ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    timestamps: dict[str, int] = field(default_factory=dict)  # request_id -> record ts
    latency_ms: dict[str, int] = field(default_factory=dict)  # the result's latency_ms


async def read_all(
    bootstrap: str, topic: str, idle_s: float = 1.0, committed_only: bool = True
) -> AsyncIterator[ConsumerRecord[Any, Any]]:
    """Every record of ``topic`` from its beginning, until nothing new comes for
    ``idle_s`` (read_committed unless ``committed_only`` is False).

    Not before the end offsets of the start are reached, though, unless nothing comes
    for ``STUCK_S``: on a loaded machine the first fetch alone can outlast ``idle_s``,
    and a benchmark then read no result at all ("RESULTS WRONG" with every result
    written)."""
    consumer = reader(bootstrap, committed_only)
    await consumer.start()
    try:
        tps = await partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        last = time.monotonic()
        while True:
            quiet = time.monotonic() - last
            if quiet >= STUCK_S or (
                quiet >= idle_s and all([await consumer.position(tp) >= end[tp] for tp in tps])
            ):
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=50_000)
            for records in batch.values():
                last = time.monotonic()
                for r in records:
                    yield r
    finally:
        await consumer.stop()


async def read_output(bootstrap: str, topic: str, idle_s: float = 1.0) -> Output:
    """Read the whole topic (read_committed) until nothing new comes for ``idle_s``."""
    out = Output()
    async for r in read_all(bootstrap, topic, idle_s):
        doc = orjson.loads(r.value)
        rid = doc["request_id"]
        out.records += 1
        if rid in out.ids:
            out.duplicates += 1
        out.ids.add(rid)
        out.statuses[doc["status"]] = out.statuses.get(doc["status"], 0) + 1
        out.timestamps[rid] = r.timestamp
        out.latency_ms[rid] = doc["latency_ms"]
    return out
