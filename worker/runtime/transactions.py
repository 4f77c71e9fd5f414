"""The transactional side of one open input partition number (exactly-once): its
producer, its batch writer, whether a transaction is open, what was sent in it, and
which request ids the changelog holds. Plus the few facts about aiokafka's
transactional producer that worker/runtime/exactly_once.py relies on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerFenced,
)

from worker.records import OutRecord
from worker.runtime.batches import BatchWriter, Sent, settled
from worker.runtime.connect import close_client
from worker.runtime.too_large import Divert, SizeLimits

# What a transactional producer raises when a transaction cannot go on. Besides
# KafkaError, aiokafka raises IllegalOperation (a send after the transaction manager
# failed) and AssertionError (a state transition out of its fatal state).
TXN_ERRORS = (KafkaError, IllegalOperation, AssertionError)
# What a producer whose transactional id a newer epoch took over raises.
FENCED = (ProducerFenced, InvalidProducerEpoch)
# Bound on stopping a producer we are done with: a new init of its transactional id
# fences it anyway, so waiting longer for its buffers buys nothing.
PRODUCER_STOP_S = 5.0


class SendRefused(KafkaError):  # type: ignore[misc]
    """A record of the open transaction was not acknowledged: committing would lose it."""


@dataclass(frozen=True, slots=True)
class TxnCapture:
    """What one partition number's commit holds, captured on the loop: the partition
    number, the offsets to commit, the changelog delta, the weight records, the outputs
    not yet written into the transaction."""

    partition: int
    offsets: dict[TopicPartition, int]
    delta: list[tuple[bytes, bytes | None]]
    weights: list[tuple[bytes, bytes]]
    backlog: list[OutRecord]


class TxnPartition:
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
        # While its transaction commits in the background, the loop's outputs for this
        # partition wait here: they belong to the next transaction.
        self.committing = False
        self.backlog: list[OutRecord] = []

    async def begin(self) -> None:
        """Begin a transaction unless one is open."""
        if not self.in_txn:
            await self.producer.begin_transaction()
            self.in_txn = True

    async def commit(
        self,
        capture: TxnCapture,
        group_id: str,
        topics: tuple[str, str],
        limits: SizeLimits,
        on_wait: Callable[[], None],
    ) -> None:
        """Write what ``capture`` holds into the transaction (``topics``: the changelog's
        and the weights' topic) and commit it; raises what made it fail."""
        changelog, weights = topics
        await self.begin()
        if capture.backlog:
            self.sent += await self.writer.write(capture.backlog)
        # The offsets go before the changelog: a changelog batch in flight while the
        # coordinator takes them made that produce request ten times slower
        # (docs/benchmarks.md).
        if capture.offsets:
            await self.producer.send_offsets_to_transaction(capture.offsets, group_id)
        if capture.delta:
            self.sent += await self.writer.write_to(changelog, capture.partition, capture.delta)
        if capture.weights:  # feedback hook: the weights commit with the outputs and offsets
            self.sent += await self.writer.write_to(weights, 0, capture.weights)
        self.sent += await self.writer.submit(force=True)
        # aiokafka commits a transaction even when the broker refused one of its
        # batches (a produce error fails only that batch's future), so every send is
        # checked before the commit.
        await acknowledged(self, limits, on_wait)
        await self.producer.commit_transaction()
        self.in_txn = False
        self.committing = False
        for key, value in capture.delta:
            if value is None:
                self.logged.discard(key.decode())
            else:
                self.logged.add(key.decode())

    async def close(self) -> None:
        """Stop the producer; nobody awaits what it still had in flight."""
        for s in self.sent:
            s.future.add_done_callback(_retrieve)
        await close_client(self.producer, PRODUCER_STOP_S)


async def acknowledged(part: TxnPartition, limits: SizeLimits, on_wait: Callable[[], None]) -> None:
    """Wait for every send of the open transaction; raise ``SendRefused`` if one was
    refused, or the fence itself if one was refused as fenced.

    What was refused as too large is learnt (``SizeLimits``), so that the rewound
    transaction splits the topic's batches or drops a huge dead letter's value. A send
    refused for a stale epoch fails its batch with ``ProducerFenced`` while the producer
    lives on: wrapped in ``SendRefused`` it would be taken for a plain failure, and
    whether a fence after a transaction timeout was counted as one would depend on
    whether a produce or a transaction request met the new epoch first."""
    sent, part.sent = part.sent, []
    await settled([s.future for s in sent], on_wait)
    results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
    refused: str | None = None
    too_large: list[Sent] = []
    fence: BaseException | None = None
    for item, result in zip(sent, results, strict=True):
        if not isinstance(result, BaseException):
            continue
        if isinstance(result, FENCED):
            fence = fence or result
        refused = refused or f"{len(item.records)} records to {item.topic}: {describe(result)}"
        if isinstance(result, MessageSizeTooLargeError):
            too_large.append(item)
    limits.learn(too_large)
    if fence is not None:
        raise fence
    if refused is not None:
        raise SendRefused(f"the broker refused {refused}")


def describe(exc: BaseException) -> str:
    """``Type: message``, once (a KafkaError's text already starts with its type)."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def producer_gave_up(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's transaction manager gave up (its sender task died, e.g.
    fenced while sending): nothing but a new producer can go on."""
    txn = getattr(producer, "_txn_manager", None)
    return bool(txn is not None and txn.is_fatal_error())


def request_rejoin(consumer: Any) -> None:
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
