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
  inits the producer, restores the table from the changelog, seeks the input to the
  committed offset read after the init (so after the zombie's transaction ended), and
  only then resumes it. A failed open is retried with backoff, the partition stays
  paused meanwhile.
- *open*: a producer and a table; its outputs go into its transaction.
- *parked*: its producer was fenced. Another worker may own it, or the broker aborted
  our transaction (``transaction_timeout_ms``): we drop it and ask the group for a
  rebalance, which hands it to whoever owns it now (us again, through *opening*).

Any other failure of a transaction (a send the broker refused, an outage): the
partition is closed and goes back to *opening*, i.e. rewound to its last commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
)
from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.engine import OutRecord
from worker.runtime.app import Clock, Worker, wall_clock_ms
from worker.runtime.changelog import changelog_topic, ensure_changelog, net_change, read_changelog
from worker.runtime.connect import admin_client, close_client, producer_options
from worker.runtime.feedback import weights_topic
from worker.runtime.retry import Backoff
from worker.runtime.sink import BatchWriter, Divert, Sent, SizeLimits, settled

log = logging.getLogger(__name__)

# What a transactional producer raises when a transaction cannot go on. Besides
# KafkaError, aiokafka raises IllegalOperation (a send after the transaction manager
# failed) and AssertionError (a state transition out of its fatal state).
TXN_ERRORS = (KafkaError, IllegalOperation, AssertionError)
# Bound on stopping a producer we are done with: a new init of its transactional id
# fences it anyway, so waiting longer for its buffers buys nothing.
PRODUCER_STOP_S = 5.0


class SendRefused(KafkaError):  # type: ignore[misc]
    """A record of the open transaction was not acknowledged: committing would lose it."""


class _Partition:
    """The transactional side of one open input partition number."""

    def __init__(
        self, producer: AIOKafkaProducer, limits: SizeLimits, divert: Divert | None = None
    ) -> None:
        self.producer = producer
        # No retries: a failed send fails the transaction, which is rewound.
        self.writer = BatchWriter(producer, limits=limits, divert=divert)
        self.in_txn = False
        self.sent: list[Sent] = []  # handed to the producer in the open transaction
        self.dirty: set[str] = set()
        self.logged: set[str] = set()  # request ids whose state the changelog holds


class ExactlyOnceWorker(Worker):
    """The streaming worker with ``delivery = "exactly-once"``."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock_ms: Clock = wall_clock_ms,
    ) -> None:
        super().__init__(config, registry, clock_ms)
        self._parts: dict[int, _Partition] = {}
        self._opening: set[int] = set()
        self._parked: set[int] = set()
        self._open_at = 0.0  # monotonic time of the next attempt to open
        self._open_backoff = Backoff(config.kafka.retry_backoff_ms)
        self._changelog = changelog_topic(config)
        # What the broker refused as too large, learnt so that the rewound transaction
        # passes (see _acknowledged); shared by every partition's writer.
        self._size_limits = SizeLimits()
        self.changelog_records = 0

    # -- set-up -------------------------------------------------------------------------

    def _consumer_options(self) -> dict[str, Any]:
        return {"isolation_level": "read_committed"}

    async def _start_producer(self, opts: dict[str, Any]) -> None:
        """No shared producer: each partition number gets a transactional one when opened."""

    async def _check_cluster(self, opts: dict[str, Any]) -> None:
        await super()._check_cluster(opts)
        async with admin_client(self.config.kafka) as admin:
            await ensure_changelog(admin, self.config)

    def _new_producer(self, partition: int) -> AIOKafkaProducer:
        cfg = self.config.kafka
        return AIOKafkaProducer(
            **producer_options(
                cfg,
                transactional_id=f"{cfg.group_id}-{partition}",
                client_id=f"{cfg.client_id}-{partition}",
            )
        )

    # -- delivery hooks -------------------------------------------------------------------

    _tracks_touched = True
    _tracks_spans = False

    def _touched(self, partition: int, request_ids: list[str]) -> None:
        part = self._parts.get(partition)
        if part is not None:
            part.dirty.update(request_ids)

    async def _emit(self, partition: int, records: list[OutRecord]) -> None:
        # Only open partitions have a table, so only they have outputs; one closed
        # since (its transaction failed earlier in this batch) is read again by
        # whoever opens it next, so its outputs are not sent.
        part = self._parts.get(partition)
        if part is None:
            return
        try:
            await self._begin(part)
            part.sent += await part.writer.write(records)
        except TXN_ERRORS as exc:
            await self._failed(partition, exc)

    async def _emitted(self) -> None:
        """Hand over the batches of partitions with none out (the first of a transaction
        also makes the producer add the partition to it, well before the commit)."""
        for p, part in list(self._parts.items()):
            try:
                part.sent += await part.writer.submit()
            except TXN_ERRORS as exc:
                await self._failed(p, exc)

    def _holding(self) -> bool:
        # Nothing is visible before the commit, which hands everything over.
        return False

    def _held(self) -> set[int]:
        return self._opening | self._parked

    async def _begin(self, part: _Partition) -> None:
        if not part.in_txn:
            await part.producer.begin_transaction()
            part.in_txn = True

    async def _commit(self, partitions: Any = None) -> None:
        """Per open partition number with anything to say: changelog delta, offsets,
        commit. One after the other: committing them concurrently was measured slower
        on a shared two-core machine (docs/benchmarks.md)."""
        numbers = (
            {tp.partition for tp in partitions} if partitions is not None else set(self._parts)
        )
        for p in sorted(numbers):
            part = self._parts.get(p)
            if part is None:
                continue
            try:
                await self._commit_partition(p, part)
            except TXN_ERRORS as exc:
                await self._failed(p, exc)

    async def _commit_partition(self, p: int, part: _Partition) -> None:
        offsets = {
            tp: pos
            for tp, pos in self._positions.items()
            if tp.partition == p and self._committed.get(tp) != pos
        }
        table = self.tables.get(p)
        if table is None:
            return  # closed meanwhile: nothing of it may be committed
        delta = net_change(table, part.dirty, part.logged)
        weights = self.feedback.records([p] if p in self.feedback.dirty else [])  # feedback hook
        if not (part.in_txn or offsets or delta or weights):
            return  # no empty transactions
        await self._begin(part)
        # The offsets go first: a changelog batch in flight while the coordinator takes
        # them made that produce request ten times slower (docs/benchmarks.md).
        if offsets:
            await part.producer.send_offsets_to_transaction(offsets, self.config.kafka.group_id)
        if delta:
            part.sent += await part.writer.write_to(self._changelog, p, delta)
        if weights:  # feedback hook: the weights commit with the outputs and offsets
            part.sent += await part.writer.write_to(weights_topic(self.config), 0, weights)
        part.sent += await part.writer.submit(force=True)
        # aiokafka commits a transaction even when the broker refused one of its
        # batches (a produce error fails only that batch's future), so every send is
        # checked before the commit.
        await self._acknowledged(part)
        await part.producer.commit_transaction()
        part.in_txn = False
        part.dirty.clear()
        if weights:
            self.feedback.dirty.discard(p)  # feedback hook
        for key, value in delta:
            if value is None:
                part.logged.discard(key.decode())
            else:
                part.logged.add(key.decode())
        self.changelog_records += len(delta)
        self.metrics.changelog(len(delta))
        self._committed.update(offsets)
        self.metrics.transaction("committed")

    async def _acknowledged(self, part: _Partition) -> None:
        """Wait for every send of the open transaction; raise if one was refused.

        What was refused as too large is learnt (``SizeLimits``), so that the rewound
        transaction splits the topic's batches or drops a huge dead letter's value."""
        sent, part.sent = part.sent, []
        await settled([s.future for s in sent], self._beat)
        results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
        refused: str | None = None
        too_large: list[Sent] = []
        for item, result in zip(sent, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            refused = refused or f"{len(item.records)} records to {item.topic}: {_describe(result)}"
            if isinstance(result, MessageSizeTooLargeError):
                too_large.append(item)
        self._size_limits.learn(too_large)
        if refused is not None:
            raise SendRefused(f"the broker refused {refused}")

    # -- failures -------------------------------------------------------------------------

    async def _failed(self, partition: int, exc: BaseException) -> None:
        """A transaction of ``partition`` cannot go on: close it. Fenced: park it and ask
        for a rebalance. Otherwise: open it again, i.e. rewind it to its last commit
        (the new producer's init aborts what was open)."""
        part = self._parts.get(partition)
        fenced = isinstance(exc, (ProducerFenced, InvalidProducerEpoch)) or (
            part is not None and _fatal(part.producer)
        )
        await self._close(partition)
        if fenced:
            log.warning(
                "producer of partition %d fenced (%s): another worker owns it, or our "
                "transaction outlived transaction_timeout_ms; asking the group to rebalance",
                partition,
                exc,
            )
            self.metrics.transaction("fenced")
            if self._owns(partition):
                self._parked.add(partition)
            _request_rejoin(self._consumer)
        else:
            log.warning(
                "transaction of partition %d failed (%s); rewinding it to the last commit",
                partition,
                _describe(exc),
            )
            self.metrics.transaction("aborted")
            # Only a partition we still own is opened again: opening one that moved
            # would init its transactional id and fence its new owner.
            if self._owns(partition):
                self._opening.add(partition)

    def _owns(self, partition: int) -> bool:
        """Whether the last assignment applied gave us ``partition``."""
        return partition in self.owned

    async def _close(self, partition: int) -> None:
        """Forget a partition number's state and pause its input; what it did not commit
        is read again by whoever opens it next."""
        part = self._parts.pop(partition, None)
        self.engine.close(partition)
        if self._consumer is not None:
            mine = [tp for tp in self._consumer.assignment() if tp.partition == partition]
            self._consumer.pause(*mine)
            for tp in mine:
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)
        if part is not None:
            for s in part.sent:
                s.future.add_done_callback(_retrieve)
            await close_client(part.producer, PRODUCER_STOP_S)

    # -- opening partitions -----------------------------------------------------------

    def _adopt(self, numbers: set[int]) -> None:
        """New partition numbers wait, paused (see on_assigned), until the loop has
        opened them."""
        self._opening |= numbers
        self._parked -= numbers
        self._open_at = 0.0

    async def _maintain(self) -> None:
        if self._opening and time.monotonic() >= self._open_at:
            async with self._lock:
                await self._open(sorted(self._opening))

    async def _open(self, numbers: list[int]) -> None:
        """Open partition numbers as a unit: nothing of them is installed unless every
        step succeeded; a failure leaves them paused, to be tried again after a backoff."""
        producers: dict[int, AIOKafkaProducer] = {}
        try:
            for p in numbers:
                producers[p] = producer = self._new_producer(p)
                await producer.start()  # init: fences the previous owner, aborts its txn
            restored = await read_changelog(self.config, numbers, self._beat)
            # feedback hook: after the producers' init, so a fenced owner's last
            # transaction has ended; its weights are read as committed.
            await self.feedback.restore(numbers, self._beat)
            positions = await self._committed_positions(numbers)
        except TXN_ERRORS as exc:
            for producer in producers.values():
                await close_client(producer, PRODUCER_STOP_S)
            wait = self._open_backoff.next_s()
            log.warning(
                "opening partitions %s failed (%s); retrying in %.1fs",
                numbers,
                _describe(exc),
                wait,
            )
            self._open_at = time.monotonic() + wait
            return
        assert self._consumer is not None
        for p in numbers:
            table = self.engine.open(p)
            for state in restored[p].values():
                table.restore(state)
            self._parts[p] = _Partition(producers[p], self._size_limits, self._divert())
            self._parts[p].logged = set(restored[p])
        self._opening -= set(numbers)
        self._open_backoff.reset()
        # A rebalance may have begun meanwhile (its callbacks wait for the lock we hold):
        # touch only what is still assigned; the callbacks close the rest.
        current = self._consumer.assignment()
        mine = [tp for tp in positions if tp in current]
        for tp in mine:
            offset = positions[tp]
            if offset is not None:
                self._consumer.seek(tp, offset)
            elif self.config.kafka.auto_offset_reset == "latest":
                await self._consumer.seek_to_end(tp)
            else:
                await self._consumer.seek_to_beginning(tp)
        if not self._paused:
            self._consumer.resume(*mine)
        log.info(
            "opened partitions %s: %d pending requests restored",
            numbers,
            sum(len(v) for v in restored.values()),
        )

    async def _committed_positions(self, numbers: list[int]) -> dict[TopicPartition, int | None]:
        """The committed offset of each input partition of ``numbers``, read after the
        producers' init, so a zombie's last transaction has ended (committed or aborted)."""
        assert self._consumer is not None
        return {
            tp: await self._consumer.committed(tp)
            for tp in self._consumer.assignment()
            if tp.partition in numbers
        }

    # -- rebalances -----------------------------------------------------------------------

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self._consumer is not None
        # aiokafka may fetch a new partition from before the callback returns: pause the
        # ones we have not opened at once (the fetcher drops what it fetched for them).
        # Pausing touches only the consumer; partition state changes under the lock.
        self._consumer.pause(*[tp for tp in assigned if tp.partition not in self._parts])
        await super().on_assigned(assigned)

    async def _apply_assignment(self, assigned: list[TopicPartition]) -> None:
        """Close what we lost, then as at-least-once. Under the loop's lock: never while
        the loop emits into or commits a partition's transaction."""
        numbers = {tp.partition for tp in assigned}
        for p in list(self._parts):
            if p not in numbers:
                await self._close(p)
        self._opening &= numbers
        self._parked &= numbers
        await super()._apply_assignment(assigned)

    async def stop(self) -> None:
        await super().stop()
        for part in self._parts.values():
            await close_client(part.producer, PRODUCER_STOP_S)
        self._parts.clear()


def _describe(exc: BaseException) -> str:
    """``Type: message``, once (a KafkaError's text already starts with its type)."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def _fatal(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's transaction manager gave up (its sender task died, e.g.
    fenced while sending): nothing but a new producer can go on."""
    txn = getattr(producer, "_txn_manager", None)
    return bool(txn is not None and txn.is_fatal_error())


def _request_rejoin(consumer: Any) -> None:
    """Ask the group coordinator for a rebalance. aiokafka has no public call for it;
    without one a partition parked after a transaction timeout would stay parked until
    some other member joined or left."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is not None:
        coordinator.request_rejoin()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Nobody awaits the sends of a closed partition: retrieve their exceptions so that
    asyncio does not log them as never retrieved."""
    if not future.cancelled():
        future.exception()
