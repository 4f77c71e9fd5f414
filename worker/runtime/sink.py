"""The at-least-once sink: batched sends through one idempotent producer, and
``flush()``, which waits for every acknowledgement and re-sends whatever failed (a
broker outage longer than the producer's own retries), so that a commit after
``flush()`` never passes over a lost output. The batching itself is
worker/runtime/batches.py.

A commit that does not hold the loop uses the two halves of ``flush()`` apart: ``take()``
(on the loop, no wait) takes the sends handed to the producer so far out of the sink and
notes the batches still open; ``acknowledged(taken)`` (in the background) waits for
exactly those, the open ones once the loop's next ``submit`` has handed them over; if
one failed they go back into the sink, for the next ``flush()`` to re-send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from worker.engine import OutRecord
from worker.runtime.batches import BatchWriter, Sent, settled
from worker.runtime.retry import Backoff, is_fatal
from worker.runtime.too_large import Divert, SizeLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Taken:
    """The outputs a commit waits for (``Sink.take``): sends handed to the producer, and
    the futures of the batches then still open."""

    sent: list[Sent]
    opens: list[asyncio.Future[Sent]]


class Sink:
    """Batched, retried sends through one producer."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        retry_backoff_ms: int,
        max_retry_backoff_ms: int = 10_000,
        on_wait: Callable[[], None] | None = None,
        renew: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        divert: Divert | None = None,
    ) -> None:
        self._renew = renew
        self._limits = SizeLimits()
        self._writer = BatchWriter(
            producer,
            retry_backoff_ms,
            max_retry_backoff_ms,
            limits=self._limits,
            on_wait=on_wait,
            divert=divert,
        )
        self._on_wait = on_wait
        self._in_flight: list[Sent] = []
        self._backoff_s = retry_backoff_ms / 1000
        self._max_backoff_s = max_retry_backoff_ms / 1000

    async def write(self, records: Sequence[OutRecord]) -> None:
        """Queue records into open batches (``submit`` hands them to the producer)."""
        self._in_flight += await self._writer.write(records)

    async def submit(self, force: bool = False) -> None:
        """Hand open batches to the producer (see ``BatchWriter.submit``)."""
        self._in_flight += await self._writer.submit(force)

    @property
    def holding(self) -> bool:
        """Whether records wait in an open batch: call ``submit`` again soon."""
        return self._writer.holding

    async def send_many(self, records: Sequence[OutRecord]) -> None:
        """Queue records; returns once they are in the producer's buffer, not acknowledged."""
        await self.write(records)
        await self.submit(force=True)

    def take(self) -> Taken:
        """What is queued now, for a commit to wait for: the sends handed to the producer
        (taken out of the sink) and the batches still open (they go at the next
        ``submit``; forcing them out now would wait for the previous batch). Later writes
        are not among them. Call ``submit(force=True)`` before waiting on the loop for
        ``acknowledged``, or it waits for ever."""
        sent, self._in_flight = self._in_flight, []
        return Taken(sent, self._writer.opened())

    async def acknowledged(self, taken: Taken, topic: str) -> dict[int, int] | None:
        """Wait until every send of ``taken`` is done, the open batches once handed over
        included. All acknowledged: per partition of ``topic``, the end of what the sends
        already handed over at ``take`` wrote there (``acked_ends``; what went later may
        follow other records of that partition). Some failed: None, and the sends taken
        are back in the sink, for ``flush`` to re-send or raise (the batches handed over
        since are in it already)."""
        await settled(taken.opens, self._on_wait)
        later = [f.result() for f in taken.opens if not f.cancelled() and f.exception() is None]
        sends = [*taken.sent, *later]
        await settled([s.future for s in sends], self._on_wait)
        if len(later) < len(taken.opens) or any(
            s.future.cancelled() or s.future.exception() is not None for s in sends
        ):
            self._in_flight[:0] = taken.sent
            return None
        return acked_ends(taken.sent, topic)

    async def flush(self, topic: str = "") -> dict[int, int]:
        """Wait until every queued record is acknowledged, re-sending failures; returns
        per partition of ``topic`` the end of what was written there (``acked_ends``).

        Returns only when all are written; during an outage it keeps retrying with
        backoff (the caller bounds it with a timeout at shutdown).
        """
        backoff = Backoff(int(self._backoff_s * 1000), int(self._max_backoff_s * 1000))
        await self.submit(force=True)
        ends: dict[int, int] = {}
        while self._in_flight:
            batch, self._in_flight = self._in_flight, []
            await settled([s.future for s in batch], self._on_wait)
            # All done by now: gather only collects the outcomes.
            results = await asyncio.gather(*(s.future for s in batch), return_exceptions=True)
            for p, end in acked_ends(batch, topic).items():
                ends[p] = max(end, ends.get(p, end))
            failed: list[OutRecord] = []
            too_large: list[Sent] = []
            for item, result in zip(batch, results, strict=True):
                if not isinstance(result, BaseException):
                    continue
                if not isinstance(result, KafkaError) or is_fatal(result):
                    raise result
                failed += item.records
                if isinstance(result, MessageSizeTooLargeError):
                    too_large.append(item)
            # The re-send below splits batches or drops values as learnt here.
            self._limits.learn(too_large)
            if self._renew is not None and any(
                isinstance(r, (MessageSizeTooLargeError, OutOfOrderSequenceNumber)) for r in results
            ):
                # Nothing is in flight now; the new producer starts its sequences afresh.
                self._writer.use(await self._renew())
            if failed:
                wait = backoff.next_s()
                log.warning(
                    "%d records not acknowledged (%s); re-sending in %.1fs",
                    len(failed),
                    _first_error(results),
                    wait,
                )
                if self._on_wait is not None:
                    self._on_wait()
                self._writer.forget_partition_counts()
                await asyncio.sleep(wait)
                await self.send_many(failed)
        return ends


def acked_ends(sent: Iterable[Sent], topic: str) -> dict[int, int]:
    """Per partition of ``topic``: the offset after the last record the acknowledged
    sends of ``sent`` wrote there (the acknowledgement's offset, the first record's of a
    batch, plus its record count). The partition's end was at least that once they were
    acknowledged, and a record handed to the producer after them lands at or after it:
    the producer keeps one partition's batches in order."""
    ends: dict[int, int] = {}
    for s in sent:
        if s.topic != topic or not s.future.done() or s.future.cancelled():
            continue
        if s.future.exception() is not None:
            continue
        meta = s.future.result()
        if meta is None or meta.offset < 0:
            continue  # no offset known (acks=0): nothing to go by
        end = meta.offset + s.count
        if end > ends.get(meta.partition, -1):
            ends[meta.partition] = end
    return ends


def _first_error(results: Sequence[object]) -> str:
    for r in results:
        if isinstance(r, BaseException):
            return f"{type(r).__name__}: {r}"
    return "?"
