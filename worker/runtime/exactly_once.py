"""Exactly-once delivery: per input partition number, one transaction holds the fused
outputs, the dead letters, the net change of the pending state (worker/runtime/
changelog.py) and the input offsets.

Why one transactional producer per partition number: aiokafka commits transactional
offsets without the group generation (TxnOffsetCommit v0), so a zombie that lost a
partition is fenced only through its transactional id. With
``transactional_id = "<group>-<partition>"`` the new owner's ``init`` of that id aborts
the zombie's open transaction and fences it.

A partition number goes through three states:

- *opening*: assigned, paused, no producer, no table. The loop (not the assignment
  callback: aiokafka stops heartbeating while that runs, and swallows its exceptions)
  calls ``maintain``, which inits the producer, restores the table from the changelog,
  seeks the input to the committed offset read after the init (so after the zombie's
  transaction ended), and only then resumes it. A failed open is retried with backoff,
  the partition stays paused meanwhile.
- *open*: a producer and a table; its outputs go into its transaction.
- *parked*: its producer was fenced. Another worker may own it, or the broker aborted
  our transaction (``transaction_timeout_ms``): we drop it and ask the group for a
  rebalance, which hands it to whoever owns it now (us again, through *opening*).

Any other failure of a transaction (a send the broker refused, an outage): the
partition is closed and goes back to *opening*, i.e. rewound to its last commit. An
authorization failure (``TransactionalIdAuthorizationFailed`` among them) is fatal
(worker/runtime/retry.py): the worker stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition

from worker.engine import OutRecord, Step
from worker.runtime.batches import SizeLimits
from worker.runtime.changelog import changelog_topic, ensure_changelog, net_change, read_changelog
from worker.runtime.connect import admin_client, close_client, producer_options
from worker.runtime.delivery import Context
from worker.runtime.feedback import weights_topic
from worker.runtime.retry import Backoff, is_fatal
from worker.runtime.transactions import (
    FENCED,
    PRODUCER_STOP_S,
    TXN_ERRORS,
    TxnPartition,
    acknowledged,
    describe,
    producer_gave_up,
    request_rejoin,
)

log = logging.getLogger(__name__)


class ExactlyOnce:
    """The exactly-once delivery mode (``delivery = "exactly-once"``)."""

    consumer_options: ClassVar[Mapping[str, Any]] = {"isolation_level": "read_committed"}
    tracks_touched: ClassVar[bool] = True
    opens_partitions: ClassVar[bool] = True

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._state = context.state
        self.parts: dict[int, TxnPartition] = {}
        self.opening: set[int] = set()
        self.parked: set[int] = set()
        self._open_at = 0.0  # monotonic time of the next attempt to open
        self._open_backoff = Backoff(context.config.kafka.retry_backoff_ms)
        self._changelog = changelog_topic(context.config)
        # What the broker refused as too large, learnt so that the rewound transaction
        # passes (see transactions.acknowledged); shared by every partition's writer.
        self._size_limits = SizeLimits()
        self.changelog_records = 0

    async def start(self) -> None:
        """No shared producer (each partition number gets a transactional one when
        opened); the changelog topic must exist."""

        async def ensure() -> None:
            async with admin_client(self._ctx.config.kafka) as admin:
                await ensure_changelog(admin, self._ctx.config)

        await self._ctx.connect(ensure)

    def _new_producer(self, partition: int) -> AIOKafkaProducer:
        cfg = self._ctx.config.kafka
        return AIOKafkaProducer(
            **producer_options(
                cfg,
                transactional_id=f"{cfg.group_id}-{partition}",
                client_id=f"{cfg.client_id}-{partition}",
            )
        )

    # -- emitting -----------------------------------------------------------------------

    async def emit(self, step: Step) -> None:
        """Mark what changed, write each partition's outputs into its transaction, then
        hand over the batches of partitions with none out (the first of a transaction
        also makes the producer add the partition to it, well before the commit)."""
        for p, ids in step.touched.items():
            part = self.parts.get(p)
            if part is not None:
                part.dirty.update(ids)
        for p, recs in step.outputs.items():
            if recs:
                await self.write(p, recs)
        for p, part in list(self.parts.items()):
            try:
                part.sent += await part.writer.submit()
            except TXN_ERRORS as exc:
                await self.failed(p, exc)

    async def write(self, partition: int, records: list[OutRecord]) -> None:
        """Write one partition number's outputs into its open transaction. One closed
        since (its transaction failed earlier in this batch) is read again by whoever
        opens it next, so its outputs are not sent."""
        part = self.parts.get(partition)
        if part is None:
            return
        try:
            await part.begin()
            part.sent += await part.writer.write(records)
        except TXN_ERRORS as exc:
            await self.failed(partition, exc)

    def holding(self) -> bool:
        # Nothing is visible before the commit, which hands everything over.
        return False

    def held(self) -> set[int]:
        return self.opening | self.parked

    # -- committing ---------------------------------------------------------------------

    async def commit(
        self, partitions: Collection[TopicPartition] | None = None, *, wait: bool = True
    ) -> None:
        """Per open partition number with anything to say: changelog delta, offsets,
        commit. One after the other: committing them concurrently was measured slower
        on a shared two-core machine (docs/benchmarks.md). Always while the loop waits
        (``wait`` is not used): a partition's next outputs go into its next transaction."""
        numbers = {tp.partition for tp in partitions} if partitions is not None else set(self.parts)
        for p in sorted(numbers):
            part = self.parts.get(p)
            if part is None:
                continue
            try:
                await self._commit_partition(p, part)
            except TXN_ERRORS as exc:
                await self.failed(p, exc)

    async def _commit_partition(self, p: int, part: TxnPartition) -> None:
        state, metrics = self._state, self._ctx.metrics
        offsets = {
            tp: pos
            for tp, pos in state.positions.items()
            if tp.partition == p and state.committed.get(tp) != pos
        }
        table = state.tables.get(p)
        if table is None:
            return  # closed meanwhile: nothing of it may be committed
        delta = net_change(table, part.dirty, part.logged)
        feedback = self._ctx.feedback
        weights = feedback.records([p] if p in feedback.dirty else [])
        if not (part.in_txn or offsets or delta or weights):
            return  # no empty transactions
        await part.begin()
        # The offsets go first: a changelog batch in flight while the coordinator takes
        # them made that produce request ten times slower (docs/benchmarks.md).
        if offsets:
            await part.producer.send_offsets_to_transaction(
                offsets, self._ctx.config.kafka.group_id
            )
        if delta:
            part.sent += await part.writer.write_to(self._changelog, p, delta)
        if weights:  # feedback hook: the weights commit with the outputs and offsets
            part.sent += await part.writer.write_to(weights_topic(self._ctx.config), 0, weights)
        part.sent += await part.writer.submit(force=True)
        # aiokafka commits a transaction even when the broker refused one of its
        # batches (a produce error fails only that batch's future), so every send is
        # checked before the commit.
        await acknowledged(part, self._size_limits, self._ctx.beat)
        await part.producer.commit_transaction()
        part.in_txn = False
        part.dirty.clear()
        if weights:
            feedback.dirty.discard(p)
        for key, value in delta:
            if value is None:
                part.logged.discard(key.decode())
            else:
                part.logged.add(key.decode())
        self.changelog_records += len(delta)
        metrics.changelog(len(delta))
        state.committed.update(offsets)
        metrics.transaction("committed")

    # -- failures -------------------------------------------------------------------------

    async def failed(self, partition: int, exc: BaseException) -> None:
        """A transaction of ``partition`` cannot go on: close it. Fatal (an authorization
        failure): raise, the worker stops. Fenced: park it and ask for a rebalance.
        Otherwise: open it again, i.e. rewind it to its last commit (the new producer's
        init aborts what was open)."""
        if is_fatal(exc):
            raise exc
        part = self.parts.get(partition)
        fenced = isinstance(exc, FENCED) or (part is not None and producer_gave_up(part.producer))
        await self._close(partition)
        metrics = self._ctx.metrics
        mine = partition in self._state.owned
        if fenced:
            log.warning(
                "producer of partition %d fenced (%s): another worker owns it, or our "
                "transaction outlived transaction_timeout_ms; asking the group to rebalance",
                partition,
                exc,
            )
            metrics.transaction("fenced")
            if mine:
                self.parked.add(partition)
            request_rejoin(self._state.consumer)
        else:
            log.warning(
                "transaction of partition %d failed (%s); rewinding it to the last commit",
                partition,
                describe(exc),
            )
            metrics.transaction("aborted")
            # Only a partition we still own is opened again: opening one that moved
            # would init its transactional id and fence its new owner.
            if mine:
                self.opening.add(partition)

    async def _close(self, partition: int) -> None:
        """Forget a partition number's state and pause its input; what it did not commit
        is read again by whoever opens it next."""
        part = self.parts.pop(partition, None)
        self._state.close(partition)
        if part is not None:
            await part.close()

    # -- opening partitions -----------------------------------------------------------

    async def assigned(self, assigned: list[TopicPartition], new: set[int]) -> None:
        """Close what we lost; new partition numbers wait, paused, until ``maintain``
        has opened them."""
        numbers = {tp.partition for tp in assigned}
        for p in list(self.parts):
            if p not in numbers:
                await self._close(p)
        self.opening = (self.opening & numbers) | new
        self.parked = (self.parked & numbers) - new
        if new:
            self._open_at = 0.0

    async def maintain(self) -> None:
        if self.opening and time.monotonic() >= self._open_at:
            await self._open(sorted(self.opening))

    async def _open(self, numbers: list[int]) -> None:
        """Open partition numbers as a unit: nothing of them is installed unless every
        step succeeded; a failure leaves them paused, to be tried again after a backoff."""
        state = self._state
        consumer = state.consumer
        assert consumer is not None
        producers: dict[int, AIOKafkaProducer] = {}
        try:
            for p in numbers:
                producers[p] = producer = self._new_producer(p)
                await producer.start()  # init: fences the previous owner, aborts its txn
            restored = await read_changelog(self._ctx.config, numbers, self._ctx.beat)
            # Read after the producers' init, so a zombie's last transaction has ended;
            # its weights too are read as committed.
            await self._ctx.feedback.restore(numbers, self._ctx.beat)
            positions = {tp: await consumer.committed(tp) for p in numbers for tp in state.of(p)}
        except TXN_ERRORS as exc:
            for producer in producers.values():
                await close_client(producer, PRODUCER_STOP_S)
            if is_fatal(exc):
                raise
            wait = self._open_backoff.next_s()
            log.warning(
                "opening partitions %s failed (%s); retrying in %.1fs", numbers, describe(exc), wait
            )
            self._open_at = time.monotonic() + wait
            return
        divert = self._ctx.divert()
        for p in numbers:
            table = state.open(p)
            for request in restored[p].values():
                table.restore(request)
            self.parts[p] = TxnPartition(producers[p], self._size_limits, divert)
            self.parts[p].logged = set(restored[p])
        self.opening -= set(numbers)
        self._open_backoff.reset()
        await self._seek(positions)
        log.info(
            "opened partitions %s: %d pending requests restored",
            numbers,
            sum(len(v) for v in restored.values()),
        )

    async def _seek(self, positions: dict[TopicPartition, int | None]) -> None:
        """Seek each opened input partition to its committed offset and resume it. A
        rebalance may have begun meanwhile (its callbacks wait for the loop's lock):
        touch only what is still assigned; the callbacks close the rest."""
        consumer = self._state.consumer
        assert consumer is not None
        current = consumer.assignment()
        mine = [tp for tp in positions if tp in current]
        for tp in mine:
            offset = positions[tp]
            if offset is not None:
                consumer.seek(tp, offset)
            elif self._ctx.config.kafka.auto_offset_reset == "latest":
                await consumer.seek_to_end(tp)
            else:
                await consumer.seek_to_beginning(tp)
        if not self._state.paused:
            consumer.resume(*mine)

    async def stop(self) -> None:
        for part in self.parts.values():
            await close_client(part.producer, PRODUCER_STOP_S)
        self.parts.clear()
