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

The commit every ``commit_interval_ms`` does not hold the loop (``commit(wait=False)``):
on the loop it captures each open partition's offsets, changelog delta and weights, and
the outputs so far are in (or go into) that partition's transaction; in the background
(``InFlight``) the transactions commit, concurrently. Outputs of the steps after
the capture wait in the partition's backlog and start its next transaction, so a
transaction holds exactly the outputs of the offsets it commits. One commit at a time:
an interval while one is in flight is skipped. A revocation and the shutdown wait for it.

Any other failure of a transaction (a send the broker refused, an outage): the
partition is closed and goes back to *opening*, i.e. rewound to its last commit (a
background commit's failure is acted on by the loop, at its next ``maintain``). An
authorization failure (``TransactionalIdAuthorizationFailed`` among them) is fatal
(worker/runtime/retry.py): the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition

from worker.engine import OutRecord, Step
from worker.runtime.changelog import changelog_topic, ensure_changelog, net_change, read_changelog
from worker.runtime.connect import admin_client, close_client, producer_options, start_clients
from worker.runtime.delivery import Context
from worker.runtime.feedback import weights_topic
from worker.runtime.inflight import InFlight
from worker.runtime.retry import Backoff, is_fatal
from worker.runtime.too_large import SizeLimits
from worker.runtime.transactions import (
    FENCED,
    PRODUCER_STOP_S,
    TXN_ERRORS,
    TxnCapture,
    TxnPartition,
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
        self._inflight = InFlight()
        # Partitions whose background commit failed, for the loop to rewind.
        self._failures: dict[int, tuple[TxnPartition, BaseException]] = {}

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
            if part.committing:
                continue
            try:
                part.sent += await part.writer.submit()
            except TXN_ERRORS as exc:
                await self.failed(p, exc)

    async def write(self, partition: int, records: list[OutRecord]) -> None:
        """Write one partition number's outputs into its open transaction; while that
        commits in the background, into its backlog, the next transaction's start. One
        closed since (its transaction failed earlier in this batch) is read again by
        whoever opens it next, so its outputs are not sent."""
        part = self.parts.get(partition)
        if part is None:
            return
        if part.committing:
            part.backlog.extend(records)
            return
        if part.backlog:
            records, part.backlog = [*part.backlog, *records], []
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
        """Per open partition number with anything to say: its outputs, changelog delta,
        offsets and weights, committed. ``wait=False`` (the loop's periodic commit):
        capture every partition's now and commit them in the background while the loop
        goes on; or skip this interval while the previous one is in flight. Otherwise
        (revocation, shutdown): after the commit in flight, commit ``partitions``
        (default all), one after the other, while the caller waits (concurrently was
        measured slower there, on a shared two-core machine: docs/benchmarks.md)."""
        if not wait:
            await self.maintain_commits()
            if self._inflight.busy:
                log.debug("a commit is still in flight: this interval is skipped")
                return
            captures = [
                (p, part, capture)
                for p, part in sorted(self.parts.items())
                if (capture := self._capture(p, part)) is not None
            ]
            if captures:
                self._inflight.start(self._finish(captures))
            return
        await self._inflight.wait()
        await self.maintain_commits()
        numbers = {tp.partition for tp in partitions} if partitions is not None else set(self.parts)
        for p in sorted(numbers):
            part = self.parts.get(p)
            capture = self._capture(p, part) if part is not None else None
            if part is None or capture is None:
                continue
            try:
                await self._commit_captured(part, capture)
            except TXN_ERRORS as exc:
                await self.failed(p, exc)

    async def maintain_commits(self) -> None:
        """On the loop: a fatal error of the background commit stops the worker; a
        partition whose background commit failed is rewound (``failed``)."""
        self._inflight.check()
        failures, self._failures = self._failures, {}
        for p, (part, exc) in sorted(failures.items()):
            if self.parts.get(p) is part:
                await self.failed(p, exc)

    def _capture(self, p: int, part: TxnPartition) -> TxnCapture | None:
        """On the loop: what partition number ``p``'s commit holds, as it is now: the
        outputs of every step so far (in the transaction, or in the backlog), the
        changelog delta, the offsets, the weights. Its later outputs wait in the backlog
        until the commit ends."""
        state = self._state
        offsets = {
            tp: pos
            for tp, pos in state.positions.items()
            if tp.partition == p and state.committed.get(tp) != pos
        }
        table = state.tables.get(p)
        if table is None:
            return None  # closed meanwhile: nothing of it may be committed
        delta = net_change(table, part.dirty, part.logged)
        feedback = self._ctx.feedback
        weights = feedback.records([p] if p in feedback.dirty else [])
        if not (part.in_txn or part.backlog or offsets or delta or weights):
            return None  # no empty transactions
        # What changes from here on is the next commit's (a failed commit rewinds the
        # partition: its table and weights are read again from the committed state).
        part.dirty = set()
        feedback.dirty.discard(p)
        part.committing = True
        backlog, part.backlog = part.backlog, []
        return TxnCapture(p, offsets, delta, weights, backlog)

    async def _finish(self, captures: list[tuple[int, TxnPartition, TxnCapture]]) -> None:
        """In the background: commit what was captured, the partitions concurrently
        (each of their round trips waits for a turn of the busy loop: one after the
        other, a round took four times as many turns). A partition whose commit fails
        keeps its backlog until the loop rewinds it (``maintain_commits``); a fatal
        error ends the job (``InFlight.check``) and, with it, the other partitions'
        commits: none goes on unattended after the job ended."""

        async def one(p: int, part: TxnPartition, capture: TxnCapture) -> None:
            if self.parts.get(p) is not part:
                return  # closed meanwhile
            try:
                await self._commit_captured(part, capture)
            except TXN_ERRORS as exc:
                if is_fatal(exc):
                    raise
                self._failures[p] = (part, exc)

        try:
            async with asyncio.TaskGroup() as group:
                for c in captures:
                    group.create_task(one(*c))
        except BaseExceptionGroup as errors:
            # The loop acts on the error itself (a fatal KafkaError), not on a group.
            raise errors.exceptions[0] from None

    async def _commit_captured(self, part: TxnPartition, capture: TxnCapture) -> None:
        state, metrics, config = self._state, self._ctx.metrics, self._ctx.config
        topics = (self._changelog, weights_topic(config))
        await part.commit(capture, config.kafka.group_id, topics, self._size_limits, self._ctx.beat)
        self.changelog_records += len(capture.delta)
        metrics.changelog(len(capture.delta))
        state.committed.update(capture.offsets)
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
        # Normally settled at the revocation; nothing is closed under a commit in flight.
        await self._inflight.wait()
        await self.maintain_commits()
        numbers = {tp.partition for tp in assigned}
        for p in list(self.parts):
            if p not in numbers:
                await self._close(p)
        self.opening = (self.opening & numbers) | new
        self.parked = (self.parked & numbers) - new
        if new:
            self._open_at = 0.0

    async def maintain(self) -> None:
        await self.maintain_commits()
        await self.open_due()

    async def open_due(self) -> None:
        if self.opening and time.monotonic() >= self._open_at:
            await self._open(sorted(self.opening))

    async def _open(self, numbers: list[int]) -> None:
        """Open partition numbers as a unit: nothing of them is installed unless every
        step succeeded; a failure leaves them paused, to be tried again after a backoff."""
        state = self._state
        consumer = state.consumer
        assert consumer is not None
        producers = {p: self._new_producer(p) for p in numbers}
        try:
            # Each init fences the previous owner and aborts its open transaction.
            await start_clients(producers.values())
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
        # A commit still in flight here was not waited for (the shutdown was cut short):
        # not committing is safe, its records are read again.
        await self._inflight.cancel()
        for part in self.parts.values():
            await close_client(part.producer, PRODUCER_STOP_S)
        self.parts.clear()
