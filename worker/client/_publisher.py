"""``PredictionPublisher``: what a model service uses to send its predictions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from worker.client._options import ConnectionOptions
from worker.client._validate import (
    MAX_EVENT_BYTES,
    PROB_TOLERANCE,
    check_event,
    check_traceparent,
)

log = logging.getLogger(__name__)


class PredictionPublisher:
    """Publish validated prediction events to an input topic of the worker.

    Each event is checked against the contract before it is queued (``InvalidPrediction``,
    a ``FusionError``, and nothing is sent), keyed by ``request_id`` with Kafka's default
    partitioner (murmur2, as the Java client: aiokafka's default), and batched for
    ``linger_ms``. Leaving the ``async with`` block (or ``await stop()``) flushes what is
    queued. ``acks="all"`` with idempotence, so a retried batch is not written twice.

    Usage::

        async with PredictionPublisher("kafka:9092", "predictions") as pub:
            await pub.publish("r-1", model="bert-base", probs=[0.1, 0.2, 0.7],
                              labels=["negative", "neutral", "positive"])
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        options: ConnectionOptions | None = None,
        linger_ms: int = 5,
        prob_tolerance: float = PROB_TOLERANCE,
        max_event_bytes: int = MAX_EVENT_BYTES,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.topic = topic
        self._options = options or ConnectionOptions()
        self._bootstrap = bootstrap_servers
        self._linger_ms = linger_ms
        self._prob_tolerance = prob_tolerance
        self._max_event_bytes = max_event_bytes
        self._stop_timeout_s = stop_timeout_s
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect; idempotent."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            **self._options.kwargs(self._bootstrap),
            linger_ms=self._linger_ms,
            acks="all",
            enable_idempotence=True,
            # The worker refuses larger events anyway; a little room for the headers.
            max_request_size=self._max_event_bytes + 16_384,
        )
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        """Flush what is queued and disconnect; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._stop_timeout_s):
                await producer.flush()
        finally:
            await producer.stop()

    async def __aenter__(self) -> PredictionPublisher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def publish(
        self,
        request_id: str,
        *,
        model: str,
        probs: Sequence[float] | Any | None = None,
        labels: Sequence[str] | None = None,
        label: str | None = None,
        score: float | None = None,
        text: str | None = None,
        confidence: float | None = None,
        ts: int | None = None,
        model_version: str | None = None,
        trace_id: str | None = None,
        traceparent: str | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Validate one prediction and queue it; returns the delivery future.

        Exactly one of ``probs`` (with optional ``labels``, their order), ``label``,
        ``score`` and ``text`` (with optional ``confidence`` in [0, 1]). ``ts`` defaults to
        the record timestamp. ``traceparent`` (W3C) goes in the record header of that name.
        ``await`` the returned future to wait for the broker's acknowledgement; leaving
        the ``async with`` block waits for all of them.

        Raises ``InvalidPrediction`` (nothing is sent) or ``RuntimeError`` when not started.
        """
        fields: dict[str, Any] = {
            "request_id": request_id,
            "model": model,
            "ts": ts,
            "probs": probs,
            "labels": labels,
            "label": label,
            "score": score,
            "text": text,
            "confidence": confidence,
            "model_version": model_version,
            "trace_id": trace_id,
        }
        doc = {k: v for k, v in fields.items() if v is not None}
        value = check_event(
            doc, prob_tolerance=self._prob_tolerance, max_event_bytes=self._max_event_bytes
        )
        headers = None if traceparent is None else [("traceparent", check_traceparent(traceparent))]
        if self._producer is None:
            raise RuntimeError("PredictionPublisher is not started: use `async with` or start()")
        future: asyncio.Future[RecordMetadata] = await self._producer.send(
            self.topic, value, key=request_id.encode("utf-8"), headers=headers
        )
        return future

    async def flush(self) -> None:
        """Wait until every queued event is acknowledged."""
        if self._producer is not None:
            await self._producer.flush()
