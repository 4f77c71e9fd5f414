"""Exactly-once delivery: per input partition number, one transaction holds the fused
outputs, the dead letters, the net change of the pending state (a compacted changelog)
and the input offsets.

Why one transactional producer per partition number: aiokafka commits transactional
offsets without the group generation (TxnOffsetCommit v0), so a zombie that lost a
partition is fenced only through its transactional id. With
``transactional_id = "<group>-<partition>"`` the new owner's ``init`` of that id aborts
the zombie's open transaction and fences it.

A commit interval writes only the net change of the pending table: a request opened
and fused within one interval writes nothing; a pending request whose members changed
writes its state; a fused request that the changelog holds gets a tombstone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, ProducerFenced
from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.errors import KafkaSetupError
from worker.join import JoinTable
from worker.runtime.app import Clock, Worker, wall_clock_ms
from worker.runtime.connect import client_options
from worker.runtime.sink import BatchWriter, OutRecord, Sent
from worker.runtime.topics import partition_counts

log = logging.getLogger(__name__)


def _unawaited(sent: list[Sent]) -> None:
    """Nobody awaits these futures (the commit reports a failed send): retrieve their
    exceptions so that asyncio does not log them as never retrieved."""
    for s in sent:
        s.future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def changelog_topic(config: Config) -> str:
    return f"{config.kafka.group_id}-pending-changelog"


class _Partition:
    """The transactional side of one input partition number."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        # No retries: a failed send fails the transaction, which is aborted and rewound.
        self.writer = BatchWriter(producer)
        self.in_txn = False
        self.dirty: set[str] = set()
        self.logged: set[str] = set()  # request ids whose state the changelog holds
        self.changelog_writes = 0


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
        self._changelog = changelog_topic(config)
        self.changelog_records = 0

    # -- set-up -------------------------------------------------------------------------

    def _consumer_options(self) -> dict[str, Any]:
        return {"isolation_level": "read_committed"}

    async def _start_producer(self, opts: dict[str, Any]) -> None:
        """No shared producer: each partition number gets a transactional one on assignment."""

    async def _check_cluster(self, opts: dict[str, Any]) -> None:
        await super()._check_cluster(opts)
        admin = AIOKafkaAdminClient(client_id=self.config.kafka.client_id, **opts)
        await admin.start()
        try:
            inputs = self.config.kafka.input_topics
            counts = await partition_counts(admin, [*inputs, self._changelog])
            partitions = counts[inputs[0]]
            if counts[self._changelog] == 0:
                brokers = len((await admin.describe_cluster())["brokers"])
                topic = NewTopic(
                    self._changelog,
                    partitions,
                    min(3, brokers),
                    topic_configs={"cleanup.policy": "compact"},
                )
                await admin.create_topics([topic])
                log.info("created changelog topic %s (%d partitions)", self._changelog, partitions)
            elif counts[self._changelog] != partitions:
                raise KafkaSetupError(
                    f"changelog {self._changelog} has {counts[self._changelog]} partitions, the "
                    f"inputs {partitions}; delete it (it is rebuilt) or match the counts"
                )
        finally:
            await admin.close()

    def _new_producer(self, partition: int) -> AIOKafkaProducer:
        cfg = self.config.kafka
        return AIOKafkaProducer(
            client_id=f"{cfg.client_id}-{partition}",
            transactional_id=f"{cfg.group_id}-{partition}",
            transaction_timeout_ms=cfg.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=256 * 1024,
            max_request_size=max(4 * 1024 * 1024, cfg.max_event_bytes + 64 * 1024),
            **client_options(cfg),
        )

    # -- delivery hooks -------------------------------------------------------------------

    _tracks_touched = True

    def _touched(self, partition: int, request_ids: list[str]) -> None:
        part = self._parts.get(partition)
        if part is not None:
            part.dirty.update(request_ids)

    async def _emit(self, partition: int, records: list[OutRecord]) -> None:
        part = self._parts.get(partition)
        if part is None:
            return
        try:
            await self._begin(part)
            # A failed send fails the commit.
            _unawaited(await part.writer.write(records))
        except ProducerFenced:
            await self._fenced(partition)
        except KafkaError as exc:
            await self._recover(partition, exc)

    async def _emitted(self) -> None:
        """Hand over the batches of partitions with none out (the first of a transaction
        also makes the producer add the partition to it, well before the commit)."""
        for p, part in list(self._parts.items()):
            try:
                _unawaited(await part.writer.submit())
            except ProducerFenced:
                await self._fenced(p)
            except KafkaError as exc:
                await self._recover(p, exc)

    def _holding(self) -> bool:
        # Nothing is visible before the commit, which hands everything over.
        return False

    async def _begin(self, part: _Partition) -> None:
        if not part.in_txn:
            await part.producer.begin_transaction()
            part.in_txn = True

    async def _commit(self, partitions: Any = None) -> None:
        """Per partition number with anything to say: changelog delta, offsets, commit.

        One partition after the other: committing them concurrently was measured slower
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
            except ProducerFenced:
                await self._fenced(p)
            except KafkaError as exc:
                await self._recover(p, exc)

    async def _commit_partition(self, p: int, part: _Partition) -> None:
        offsets = {
            tp: pos
            for tp, pos in self._positions.items()
            if tp.partition == p and self._committed.get(tp) != pos
        }
        delta = self._changelog_delta(self.tables[p], part)
        if not (part.in_txn or offsets or delta):
            return  # no empty transactions
        await self._begin(part)
        # The offsets go first: a changelog batch in flight while the coordinator takes
        # them made that produce request ten times slower (docs/benchmarks.md).
        if offsets:
            await part.producer.send_offsets_to_transaction(offsets, self.config.kafka.group_id)
        if delta:
            _unawaited(await part.writer.write_to(self._changelog, p, delta))
        _unawaited(await part.writer.submit(force=True))
        await part.producer.commit_transaction()
        part.in_txn = False
        part.dirty.clear()
        for key, value in delta:
            rid = key.decode()
            if value is None:
                part.logged.discard(rid)
            else:
                part.logged.add(rid)
        self.changelog_records += len(delta)
        self.metrics.changelog(len(delta))
        self._committed.update(offsets)
        self.metrics.transaction("committed")

    def _changelog_delta(
        self, table: JoinTable, part: _Partition
    ) -> list[tuple[bytes, bytes | None]]:
        delta: list[tuple[bytes, bytes | None]] = []
        for rid in part.dirty:
            state = table.pending_state(rid)
            if state is not None:
                delta.append((rid.encode(), orjson.dumps(state)))
            elif rid in part.logged:
                delta.append((rid.encode(), None))
        return delta

    # -- failures -------------------------------------------------------------------------

    async def _fenced(self, partition: int) -> None:
        """Another worker owns this partition now: drop it, never retry blindly."""
        log.warning(
            "producer for partition %d fenced: another worker owns it; dropping it", partition
        )
        self.metrics.transaction("fenced")
        part = self._parts.pop(partition, None)
        self.tables.pop(partition, None)
        assert self._consumer is not None
        mine = [tp for tp in self._consumer.assignment() if tp.partition == partition]
        self._consumer.pause(*mine)
        for tp in mine:
            self._positions.pop(tp, None)
        if part is not None:
            with contextlib.suppress(KafkaError):
                await part.producer.stop()

    async def _recover(self, partition: int, exc: KafkaError) -> None:
        """A transaction failed: abort it and rewind the partition to the last commit
        (pending state from the changelog, input from the committed offsets)."""
        log.warning(
            "transaction for partition %d failed (%s); rewinding to the last commit", partition, exc
        )
        self.metrics.transaction("aborted")
        part = self._parts.pop(partition, None)
        if part is not None:
            with contextlib.suppress(KafkaError):
                await part.producer.stop()
        # A fresh producer re-initialises the transactional id, which aborts what was open.
        await self._open_partitions([partition])
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            if tp.partition == partition:
                committed = await self._consumer.committed(tp)
                if committed is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, committed)
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)

    # -- rebalances -----------------------------------------------------------------------

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in assigned}
        for p in list(self._parts):
            if p not in numbers:
                part = self._parts.pop(p)
                with contextlib.suppress(KafkaError):
                    await part.producer.stop()
        new = sorted(numbers - set(self._parts))
        await super().on_assigned(assigned)
        async with self._lock:
            await self._open_partitions(new)

    async def _open_partitions(self, numbers: list[int]) -> None:
        """Init each partition's producer (fencing the previous owner and aborting its open
        transaction), then restore its pending table from the changelog. The consumer
        does not fetch while this runs (it is called from the assignment callback)."""
        if not numbers:
            return
        for p in numbers:
            producer = self._new_producer(p)
            await producer.start()
            self._parts[p] = _Partition(producer)
        restored = await self._restore(numbers)
        j = self.config.join
        for p in numbers:
            table = JoinTable(
                self.config.model_names,
                j.timeout_ms,
                j.fused_memory_effective_ms,
                j.fused_memory_count,
            )
            for state in restored.get(p, {}).values():
                table.restore(state)
            self.tables[p] = table
            self._parts[p].logged = set(restored.get(p, {}))
        log.info(
            "restored %d pending requests for partitions %s",
            sum(len(v) for v in restored.values()),
            numbers,
        )

    async def _restore(self, numbers: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
        """Read the changelog partitions to their end (read_committed): last write wins,
        a tombstone removes."""
        reader = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            client_id=f"{self.config.kafka.client_id}-restore",
            **client_options(self.config.kafka),
        )
        await reader.start()
        states: dict[int, dict[str, dict[str, Any]]] = {p: {} for p in numbers}
        try:
            tps = [TopicPartition(self._changelog, p) for p in numbers]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        rid = r.key.decode()
                        if r.value is None:
                            states[tp.partition].pop(rid, None)
                        else:
                            states[tp.partition][rid] = orjson.loads(r.value)
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await reader.stop()
        return states

    async def stop(self) -> None:
        await super().stop()
        for part in self._parts.values():
            with contextlib.suppress(KafkaError, asyncio.TimeoutError):
                await part.producer.stop()
        self._parts.clear()
