"""The sink: fused results, dead letters and late events to their topics.

Sends are queued without waiting for acknowledgements; ``flush()`` waits for all of
them and re-sends whatever failed (a broker outage longer than the producer's own
retries), so that a commit after ``flush()`` never passes over a lost output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


@dataclass(slots=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


@dataclass(slots=True)
class _InFlight:
    record: OutRecord
    future: asyncio.Future[Any]


class Sink:
    """Batched, retried sends through one producer."""

    def __init__(
        self, producer: AIOKafkaProducer, retry_backoff_ms: int, max_retry_backoff_ms: int = 10_000
    ) -> None:
        self._producer = producer
        self._in_flight: list[_InFlight] = []
        self._backoff_s = retry_backoff_ms / 1000
        self._max_backoff_s = max_retry_backoff_ms / 1000
        self.sent: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def send_many(self, records: Sequence[OutRecord]) -> None:
        """Queue records; returns once they are in the producer's buffer, not acknowledged."""
        for rec in records:
            await self._enqueue(rec)

    async def _enqueue(self, rec: OutRecord) -> None:
        backoff = self._backoff_s
        while True:
            try:
                fut = await self._producer.send(
                    rec.topic, rec.value, key=rec.key, headers=rec.headers
                )
            except MessageSizeTooLargeError:
                rec = _shrunk(rec)
                continue
            except KafkaError as exc:
                # The buffer stayed full for request_timeout_ms: the broker is away.
                log.warning("send to %s failed (%s); retrying in %.1fs", rec.topic, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                continue
            self._in_flight.append(_InFlight(rec, fut))
            return

    async def flush(self) -> None:
        """Wait until every queued record is acknowledged, re-sending failures.

        Returns only when all are written; during an outage it keeps retrying with
        backoff (the caller bounds it with a timeout at shutdown).
        """
        backoff = self._backoff_s
        while self._in_flight:
            batch, self._in_flight = self._in_flight, []
            results = await asyncio.gather(*(f.future for f in batch), return_exceptions=True)
            failed: list[OutRecord] = []
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, MessageSizeTooLargeError):
                        failed.append(_shrunk(item.record))
                    elif isinstance(result, KafkaError):
                        failed.append(item.record)
                    else:
                        raise result
                else:
                    self.sent[item.record.topic] = self.sent.get(item.record.topic, 0) + 1
            if failed:
                log.warning(
                    "%d records not acknowledged (%s); re-sending in %.1fs",
                    len(failed),
                    _first_error(results),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                await self.send_many(failed)


def _first_error(results: Sequence[object]) -> str:
    for r in results:
        if isinstance(r, BaseException):
            return f"{type(r).__name__}: {r}"
    return "?"


def _shrunk(rec: OutRecord) -> OutRecord:
    """A dead letter whose original value the broker refuses (over its size limit) is
    sent without the value; the source headers still point at the original record."""
    if rec.value is None:
        raise MessageSizeTooLargeError(f"record for {rec.topic} too large even without a value")
    size = len(rec.value)
    headers = [
        *(rec.headers or []),
        ("value_omitted", f"too large for the broker: {size} bytes".encode()),
    ]
    log.warning(
        "record of %d bytes for %s too large for the broker; sent without value", size, rec.topic
    )
    return OutRecord(rec.topic, rec.key, None if rec.key is not None else b"", headers)
