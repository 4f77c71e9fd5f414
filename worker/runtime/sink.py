"""The at-least-once sink: batched sends through one idempotent producer, and
``flush()``, which waits for every acknowledgement and re-sends whatever failed (a
broker outage longer than the producer's own retries), so that a commit after
``flush()`` never passes over a lost output. The batching itself is
worker/runtime/batches.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from worker.engine import OutRecord
from worker.runtime.batches import BatchWriter, Divert, Sent, SizeLimits, settled
from worker.runtime.retry import Backoff, is_fatal

log = logging.getLogger(__name__)


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

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged, re-sending failures.

        Returns only when all are written; during an outage it keeps retrying with
        backoff (the caller bounds it with a timeout at shutdown).
        """
        backoff = Backoff(int(self._backoff_s * 1000), int(self._max_backoff_s * 1000))
        await self.submit(force=True)
        while self._in_flight:
            batch, self._in_flight = self._in_flight, []
            await settled([s.future for s in batch], self._on_wait)
            # All done by now: gather only collects the outcomes.
            results = await asyncio.gather(*(s.future for s in batch), return_exceptions=True)
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


def _first_error(results: Sequence[object]) -> str:
    for r in results:
        if isinstance(r, BaseException):
            return f"{type(r).__name__}: {r}"
    return "?"
