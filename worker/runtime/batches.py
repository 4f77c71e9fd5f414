"""Batches of records per topic partition, handed to one producer.

Records go into one batch per topic partition (``send_batch``, the batches made by
worker/runtime/record_batch.py), partitioned as Kafka's default partitioner does
(murmur2 of the key, for a whole batch of keys at once), so queueing a record costs no
coroutine and no future of its own; the compiled batch takes a step's records for one
partition in one call (``append_many``). A batch is handed to the producer when it is full,
or by ``submit`` once the previous batch of its partition is acknowledged
(``submit(force=True)``: at once). A record too big to share a batch (a dead letter of
a huge event) goes alone through ``producer.send``, which also checks it against the
producer's size limit. A batch the broker refuses as too large (over the topic's
``max.message.bytes``) makes its topic one record per batch; a record refused alone
goes without its value (worker/runtime/too_large.py).

``BatchWriter`` is what both delivery modes send through: the at-least-once ``Sink``
(worker/runtime/sink.py) wraps it with re-sends; exactly-once uses it alone, since a
failed transaction is aborted, never re-sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from worker.engine import OutRecord
from worker.murmur2 import murmur2
from worker.runtime.partitioner import partition_rows, partitions_for, rows_by_partition
from worker.runtime.record_batch import batch_factory
from worker.runtime.retry import Backoff, is_fatal
from worker.runtime.too_large import Divert, SizeLimits, shrunk

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# Records larger than this go alone through producer.send (see the module docstring).
SMALL_RECORD_BYTES = 64 * 1024
# While waiting for acknowledgements, call on_wait this often (see settled).
WAIT_BEAT_S = 1.0
T = TypeVar("T")


class Sent:
    """Records for one topic handed to the producer, and the future of their
    acknowledgement.

    Once the send is acknowledged it keeps only their number (``count``): only a failed
    send's records are sent again. Dropped as each acknowledgement arrives, a few dozen
    at a time, they do not pile up until the next commit: freed all at once there, a
    second of at-least-once results (about 25,000 at half load) took 6-10 ms of the loop
    every second, which then fell behind."""

    __slots__ = ("count", "future", "records", "topic")

    def __init__(self, topic: str, records: list[OutRecord], future: asyncio.Future[Any]) -> None:
        self.topic = topic
        self.records = records
        self.count = len(records)
        self.future = future
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.records = []


class _Open:
    """A batch being filled for one topic partition, with its records, and the future of
    its ``Sent`` once handed to the producer, for whoever waits for that (``opened``)."""

    __slots__ = ("builder", "handed", "records")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.records: list[OutRecord] = []
        self.handed: asyncio.Future[Sent] | None = None


class BatchWriter:
    """Fills one batch per topic partition and hands them to the producer.

    A partition has at most one batch of ours in the producer that is not acknowledged
    yet: while it is out, ``submit`` leaves the next one open to take more records
    (``submit(force=True)`` hands everything over). ``producer.send`` keeps filling the
    producer's own open batch the same way; handing over a second batch instead would
    make ``send_batch`` wait until the first is sent (in a transaction, until the
    coordinator added the partition).

    With ``retry_backoff_ms``, a step the producer refuses (its buffer stayed full for
    ``request_timeout_ms``: the broker is away) is retried with backoff until it passes,
    and a big record over the producer's size limit is sent without its value. Without
    it (``None``, exactly-once), the error goes to the caller, who aborts the transaction.

    ``limits`` (learnt by the caller from the broker's refusals, see ``SizeLimits``)
    makes a topic one record per batch, and sends a record whose value is over its
    topic's limit without the value. ``on_wait`` is called before each backoff (the
    worker beats its liveness there: waiting out an outage is not being stuck).
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        retry_backoff_ms: int | None = None,
        max_retry_backoff_ms: int = 10_000,
        limits: SizeLimits | None = None,
        on_wait: Callable[[], None] | None = None,
        divert: Divert | None = None,
    ) -> None:
        self._producer = producer
        self._new_batch = batch_factory(producer)
        self._bulk = _bulk(self._new_batch)
        self._divert = divert
        self._backoff_s = None if retry_backoff_ms is None else retry_backoff_ms / 1000
        self._max_backoff_s = max_retry_backoff_ms / 1000
        limits = limits if limits is not None else SizeLimits()
        # The learnt sets themselves, shared with (and grown by) the caller.
        self._limits = limits.value_limits
        self._single = limits.single_topics
        self._on_wait = on_wait
        self._open: dict[tuple[str, int], _Open] = {}
        self._last: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._partitions: dict[str, int] = {}
        self._round_robin = 0

    @property
    def holding(self) -> bool:
        """Whether some records wait in an open batch (``submit`` to hand them over)."""
        return bool(self._open)

    async def write(self, records: Sequence[OutRecord]) -> list[Sent]:
        """Queue ``records``, each to the partition its key hashes to; returns what was
        handed to the producer meanwhile (batches that filled up, big records).
        ``submit`` hands over the rest."""
        if self._bulk and not self._limits and records:
            # The usual call, a step's results: one topic, keyed, none big. Checked and
            # queued a list at a time, not record by record (list comprehensions: map
            # with attrgetter reads a msgspec Struct's field at half their speed).
            topic = records[0].topic
            keys = [rec.key for rec in records]
            values = [rec.value for rec in records]
            if (
                topic not in self._single
                and None not in keys
                and None not in values
                and max(map(len, cast("list[bytes]", values))) <= SMALL_RECORD_BYTES
                and [rec.topic for rec in records].count(topic) == len(records)
            ):
                n = await self._partition_count(topic)
                headers = [rec.headers for rec in records]
                listed = headers if any(headers) else None
                sent: list[Sent] = []
                for p, rows in partition_rows(cast("list[bytes]", keys), n):
                    sent += await self._append_run((topic, p), records, keys, values, listed, rows)
                return sent
        return await self._write_each(records)

    async def _write_each(self, records: Sequence[OutRecord]) -> list[Sent]:
        """``write`` record by record (mixed topics, keyless or big records, limits)."""
        sent: list[Sent] = []
        by_topic: dict[str, list[OutRecord]] = {}
        limits = self._limits
        for rec in records:
            value = rec.value
            if limits and value is not None and len(value) > limits.get(rec.topic, len(value)):
                rec = self._too_large(rec)
                value = rec.value
            if (
                value is not None
                and len(value) > SMALL_RECORD_BYTES
                and rec.topic not in self._single
            ):
                sent.append(await self.send_one(rec))
                continue
            group = by_topic.get(rec.topic)
            if group is None:
                by_topic[rec.topic] = [rec]
            else:
                group.append(rec)
        for topic, group in by_topic.items():
            n = await self._partition_count(topic)
            partitions = self._partition_numbers(group, n)
            if self._bulk and topic not in self._single:
                keys = [rec.key for rec in group]
                values = [rec.value for rec in group]
                headers = [rec.headers for rec in group]
                listed = headers if any(headers) else None
                for p, rows in rows_by_partition(partitions):
                    sent += await self._append_run((topic, p), group, keys, values, listed, rows)
                continue
            for rec, p in zip(group, partitions, strict=True):
                tp = (topic, p)
                full = self._append(tp, rec)
                if full is not None:
                    sent.append(await self._submit(tp, full))
        return sent

    async def _append_run(
        self,
        tp: tuple[str, int],
        records: Sequence[OutRecord],
        keys: list[bytes | None],
        values: list[bytes | None],
        headers: list[Headers | None] | None,
        rows: list[int],
    ) -> list[Sent]:
        """Add the records at ``rows`` of ``records`` (``keys``, ``values``, ``headers``:
        theirs, by position) to the open batch of ``tp`` in one call into the compiled
        batch (``append_many``; they share one timestamp, the time now), submitting each
        batch that fills up; returns what was submitted."""
        sent: list[Sent] = []
        start, end = 0, len(rows)
        while start < end:
            batch = self._open.get(tp)
            if batch is None:
                batch = self._open[tp] = _Open(self._new_batch())
            stop: int = batch.builder.append_many(keys, values, start, None, headers, rows)
            batch.records += [records[i] for i in rows[start:stop]]
            if stop < end:  # full: it closed; an empty batch takes the next record
                del self._open[tp]
                sent.append(await self._submit(tp, batch))
            start = stop
        return sent

    def _partition_numbers(self, records: list[OutRecord], n: int) -> list[int]:
        """Kafka's default partitioner: murmur2 of the key; keyless records in turn."""
        keys = [rec.key for rec in records]
        if None not in keys:
            return partitions_for(cast("list[bytes]", keys), n)
        out: list[int] = []
        for key in keys:
            if key is None:
                self._round_robin += 1
                out.append(self._round_robin % n)
            else:
                out.append((murmur2(key) & 0x7FFFFFFF) % n)
        return out

    async def write_to(
        self, topic: str, partition: int, pairs: Sequence[tuple[bytes, bytes | None]]
    ) -> list[Sent]:
        """Queue (key, value) records to one given partition (the changelog's)."""
        sent: list[Sent] = []
        tp = (topic, partition)
        for key, value in pairs:
            rec = OutRecord(topic, key, value)
            if value is not None and len(value) > SMALL_RECORD_BYTES:
                future = await self._producer.send(topic, value, key=key, partition=partition)
                sent.append(Sent(topic, [rec], future))
            else:
                full = self._append(tp, rec)
                if full is not None:
                    sent.append(await self._submit(tp, full))
        return sent

    def _append(self, tp: tuple[str, int], rec: OutRecord) -> _Open | None:
        """Add ``rec`` to the open batch of ``tp``; when that batch is full, ``rec`` starts
        the next one and the full one is returned, for the caller to submit."""
        batch = self._open.get(tp)
        if (
            batch is not None
            and tp[0] not in self._single
            and batch.builder.append(
                key=rec.key, value=rec.value, timestamp=None, headers=rec.headers
            )
        ):
            batch.records.append(rec)
            return None
        new = self._open[tp] = _Open(self._new_batch())
        # An empty batch takes any record.
        new.builder.append(key=rec.key, value=rec.value, timestamp=None, headers=rec.headers)
        new.records.append(rec)
        return batch

    async def submit(self, force: bool = False) -> list[Sent]:
        """Hand the open batches to the producer: those whose partition has no batch
        out, or all of them (``force``)."""
        sent: list[Sent] = []
        for tp in list(self._open):
            last = self._last.get(tp)
            if force or last is None or last.done():
                sent.append(await self._submit(tp, self._open.pop(tp)))
        return sent

    def use(self, producer: AIOKafkaProducer) -> None:
        """Send through ``producer`` from now on (nothing of ours may be in flight)."""
        assert not self._open, "batches still open"
        self._producer = producer
        self._new_batch = batch_factory(producer)
        self._bulk = _bulk(self._new_batch)
        self._last.clear()

    def forget_partition_counts(self) -> None:
        """Ask the partition counts again at the next write (a topic may have grown)."""
        self._partitions.clear()

    def opened(self) -> list[asyncio.Future[Sent]]:
        """For each batch open now, a future of its ``Sent``, done once ``submit`` (or a
        full batch) hands it to the producer: a commit's outputs may still wait in an
        open batch, and forcing them out would wait for the previous batch."""
        futures = []
        for batch in self._open.values():
            if batch.handed is None:
                batch.handed = asyncio.get_running_loop().create_future()
            futures.append(batch.handed)
        return futures

    async def _submit(self, tp: tuple[str, int], batch: _Open) -> Sent:
        # Closed: sent at the next chance, not after linger_ms, and nothing joins it.
        batch.builder.close()
        try:
            future = await self._retrying(
                f"{len(batch.records)} records to {tp[0]}",
                lambda: self._producer.send_batch(batch.builder, tp[0], partition=tp[1]),
            )
        except BaseException as exc:
            if batch.handed is not None and not batch.handed.done():
                if isinstance(exc, asyncio.CancelledError):
                    batch.handed.cancel()
                else:
                    batch.handed.set_exception(exc)
            raise
        self._last[tp] = future
        sent = Sent(tp[0], batch.records, future)
        if batch.handed is not None and not batch.handed.done():
            batch.handed.set_result(sent)
        return sent

    async def send_one(self, rec: OutRecord) -> Sent:
        """Send one record through ``producer.send`` (in no batch of ours). Retrying, a
        record over the producer's own size limit goes without its value."""

        async def send(r: OutRecord) -> Sent:
            future = await self._producer.send(r.topic, r.value, key=r.key, headers=r.headers)
            return Sent(r.topic, [r], future)

        what = f"a record to {rec.topic}"
        try:
            return await self._retrying(what, lambda: send(rec))
        except MessageSizeTooLargeError:
            if self._backoff_s is None:
                raise
            small = self._too_large(rec)
            return await self._retrying(what, lambda: send(small))

    def _too_large(self, rec: OutRecord) -> OutRecord:
        """What goes instead of a record over its topic's limit: a fused result becomes
        a dead letter (never a null value, a tombstone on a compacted output topic); a
        dead letter goes without its value."""
        if self._divert is not None and rec.topic == self._divert.output_topic:
            return self._divert(rec)
        return shrunk(rec)

    async def _partition_count(self, topic: str) -> int:
        """``topic``'s partition count, asked of the producer once."""
        n = self._partitions.get(topic)
        if n is None:
            partitions = await self._retrying(
                f"the partitions of {topic}", lambda: self._producer.partitions_for(topic)
            )
            n = self._partitions[topic] = len(partitions)
        return n

    async def _retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step()``; when retrying, a KafkaError other than a too-large record is
        retried with backoff until it passes, else it goes to the caller."""
        backoff = (
            None
            if self._backoff_s is None
            else Backoff(int(self._backoff_s * 1000), int(self._max_backoff_s * 1000))
        )
        while True:
            try:
                return await step()
            except MessageSizeTooLargeError:
                raise  # waiting does not make a record smaller
            except KafkaError as exc:
                if backoff is None or is_fatal(exc):
                    raise
                wait = backoff.next_s()
                log.warning("sending %s failed (%s); retrying in %.1fs", what, exc, wait)
                if self._on_wait is not None:
                    self._on_wait()
                await asyncio.sleep(wait)


async def settled(
    futures: Sequence[asyncio.Future[Any]], on_wait: Callable[[], None] | None = None
) -> None:
    """Wait until every future is done, calling ``on_wait`` every second meanwhile:
    during an outage the producer holds a batch up to its ``request_timeout_ms``."""
    pending = {f for f in futures if not f.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=WAIT_BEAT_S)
        if pending and on_wait is not None:
            on_wait()


def _bulk(new_batch: Callable[[], Any]) -> bool:
    """Whether the batches ``new_batch`` makes take a run of records in one call (the
    compiled batch; aiokafka's takes them one by one)."""
    return hasattr(new_batch(), "append_many")
