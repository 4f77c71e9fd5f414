"""What the broker refuses as too large: the limits learnt from its refusals
(``SizeLimits``), a fused result turned into a dead letter (``Divert``), and a record
sent without its value (``shrunk``). The batch writer (worker/runtime/batches.py)
applies them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from aiokafka.errors import MessageSizeTooLargeError

from worker.engine import OutRecord

log = logging.getLogger(__name__)


class Refused(Protocol):
    """Records for one topic that the broker refused as too large (a ``Sent``)."""

    @property
    def topic(self) -> str: ...

    @property
    def records(self) -> Sequence[OutRecord]: ...


class SizeLimits:
    """What the broker refused as too large, per output topic, learnt from its refusals
    so that a re-send (at-least-once) or a rewound transaction (exactly-once) passes.

    A topic's first refusal makes it one record per batch: its ``max.message.bytes`` is
    below our batches (a big record that went through ``producer.send`` may also have
    shared the producer's batch). A record then refused alone is itself over the limit:
    the topic's value limit drops below it, and the writer sends it without its value
    (``shrunk``). So a topic converges in at most two refusals.
    """

    def __init__(self) -> None:
        self.single_topics: set[str] = set()
        self.value_limits: dict[str, int] = {}

    def learn(self, refused: Sequence[Refused]) -> None:
        """Learn from the sends of one round that the broker refused as too large."""
        single_before = set(self.single_topics)
        for item in refused:
            if item.topic in single_before and len(item.records) == 1:
                size = len(item.records[0].value or b"")
                self.value_limits[item.topic] = min(
                    self.value_limits.get(item.topic, size), size - 1
                )
            else:
                self.single_topics.add(item.topic)


class Divert:
    """Turns a fused result the output topic refuses as too large into a dead letter
    (reason ``too_large``, keyed by request_id, the result as value), and counts it."""

    def __init__(
        self, output_topic: str, dlq_topic: str, on_divert: Callable[[], None] | None = None
    ) -> None:
        self.output_topic = output_topic
        self.dlq_topic = dlq_topic
        self._on_divert = on_divert

    def __call__(self, rec: OutRecord) -> OutRecord:
        size = len(rec.value or b"")
        log.warning(
            "fused result of %d bytes too large for %s; sent to %s", size, rec.topic, self.dlq_topic
        )
        if self._on_divert is not None:
            self._on_divert()
        headers = [
            *(rec.headers or []),
            ("error", b"too_large"),
            ("error_detail", f"fused result of {size} bytes refused by {rec.topic}".encode()),
            ("output_topic", rec.topic.encode()),
        ]
        return OutRecord(self.dlq_topic, rec.key, rec.value or b"", headers)


def shrunk(rec: OutRecord) -> OutRecord:
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
