"""One language identifier as a model service: texts in, predictions out.

It reads ``{"request_id": ..., "text": ...}`` records (keyed by request_id) from a texts
topic in a consumer group of its own, predicts, and publishes one prediction per text
through ``worker.client.PredictionPublisher``, with the text's ``traceparent`` header when
it has a valid one. At-least-once: offsets are committed only after the batch's
predictions were acknowledged, so a restart may repeat a prediction (the worker keeps the
first), never lose one. A record that is not such a text is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from worker.client import (
    ConnectionOptions,
    InvalidPrediction,
    PredictionPublisher,
    check_traceparent,
)
from worker.demo_langid.identifiers import Identifier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextRequest:
    request_id: str
    text: str
    traceparent: str | None


def parse_text(value: bytes | None, headers: Any = ()) -> TextRequest | None:
    """A text request from a record, or None when the record is not one."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    request_id, text = doc.get("request_id"), doc.get("text")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 256:
        return None
    if not isinstance(text, str):
        return None
    traceparent = None
    for key, raw in headers or ():
        if key == "traceparent":
            try:
                traceparent = check_traceparent(raw.decode("ascii"))
            except (InvalidPrediction, UnicodeDecodeError):
                traceparent = None
    return TextRequest(request_id, text, None if traceparent is None else traceparent.decode())


async def serve(
    identifier: Identifier,
    bootstrap_servers: str,
    texts_topic: str,
    predictions_topic: str,
    *,
    group_id: str | None = None,
    options: ConnectionOptions | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve until ``stop`` is set (or the task is cancelled); returns the count published."""
    opts = options or ConnectionOptions(client_id=f"langid-{identifier.name}")
    stop = stop or asyncio.Event()
    consumer = AIOKafkaConsumer(
        texts_topic,
        **opts.kwargs(bootstrap_servers),
        group_id=group_id or f"langid-{identifier.name}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    published = skipped = 0
    async with PredictionPublisher(bootstrap_servers, predictions_topic, options=opts) as pub:
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batches.values():
                    for record in records:
                        request = parse_text(record.value, record.headers)
                        if request is None:
                            skipped += 1
                            continue
                        await pub.publish(
                            request.request_id,
                            model=identifier.name,
                            # In the order of its own codes, the model's labels in the
                            # worker's configuration: sending them (hundreds of codes)
                            # with every event would cost more than the prediction.
                            probs=identifier.predict(request.text),
                            traceparent=request.traceparent,
                        )
                        published += 1
                if batches:
                    await pub.flush()
                    await consumer.commit()
        finally:
            await consumer.stop()
            if skipped:
                log.warning("%s skipped %d records that are not texts", identifier.name, skipped)
    return published
