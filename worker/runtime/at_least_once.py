"""At-least-once delivery: one idempotent producer behind the re-sending ``Sink``, and
the commit rule of worker/offsets.py.

Every ``commit_interval_ms`` the sink is flushed (every output acknowledged, failures
re-sent), then per input partition the offset committed is the oldest pending event's
offset or the position, lowered out of the offset span of any request fused since the
last commit (``safe_commit_offset``): a crash repeats results, never loses one, and a
repeat is fused from all the events of the original.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from worker.engine import Step
from worker.offsets import safe_commit_offset
from worker.runtime.connect import close_client, producer_options
from worker.runtime.delivery import Context
from worker.runtime.readback import ReadBack
from worker.runtime.retry import is_fatal
from worker.runtime.sink import Sink

log = logging.getLogger(__name__)


class AtLeastOnce:
    """The at-least-once delivery mode (``delivery = "at-least-once"``)."""

    consumer_options: ClassVar[Mapping[str, Any]] = {}
    tracks_touched: ClassVar[bool] = False
    opens_partitions: ClassVar[bool] = False

    def __init__(self, context: Context) -> None:
        self._ctx = context
        self._state = context.state
        self._producer: AIOKafkaProducer | None = None
        self._sink: Sink | None = None
        # Per input partition, the (first, last) offsets of requests fused from it that a
        # commit may still fall inside (see worker/offsets.py); pruned at each commit.
        self._spans: dict[TopicPartition, list[tuple[int, int]]] = {}
        # Requests fused by an earlier owner are read back at assignment, not re-published
        # (exactly-once needs none: its changelog holds the pending state).
        self._readback = ReadBack(context.config, context.beat)

    async def start(self) -> None:
        """One idempotent producer for every output."""
        producer = await self._renew_producer()
        self._sink = Sink(
            producer,
            self._ctx.config.kafka.retry_backoff_ms,
            on_wait=self._ctx.beat,
            renew=self._renew_producer,
            divert=self._ctx.divert(),
        )

    async def _renew_producer(self) -> AIOKafkaProducer:
        """Start a new idempotent producer (a new producer id) in place of the current one.

        The sink asks for one after the broker refused a batch: aiokafka does not reset an
        idempotent producer's sequence numbers then, so every later batch to that
        partition would fail with OutOfOrderSequenceNumber."""
        old, self._producer = (
            self._producer,
            AIOKafkaProducer(**producer_options(self._ctx.config.kafka)),
        )
        if old is not None:
            await close_client(old, 5.0)
        await self._ctx.connect(self._producer.start)
        return self._producer

    async def maintain(self) -> None:
        """Nothing to do before a fetch."""

    async def emit(self, step: Step) -> None:
        """Keep the fused requests' offset spans, queue the outputs, hand them over."""
        assert self._sink is not None
        spans = self._spans
        for done, p in zip(step.finished, step.result_partitions, strict=True):
            if done.spans is not None:
                for topic, span in done.spans.items():
                    spans.setdefault(TopicPartition(topic, p), []).append(span)
        for recs in step.outputs.values():
            if recs:
                await self._sink.write(recs)
        await self._sink.submit()

    def holding(self) -> bool:
        return self._sink is not None and self._sink.holding

    def held(self) -> set[int]:
        return set()

    async def assigned(self, assigned: list[TopicPartition], new: set[int]) -> None:
        """Forget the spans of partitions lost; new partition numbers get an empty table
        each and are read from their committed offset."""
        for tp in list(self._spans):
            if tp not in assigned:
                del self._spans[tp]
        for p in new:
            self._state.open(p)
        state, ctx = self._state, self._ctx
        await self._readback.assigned(assigned, new, state.tables, int(ctx.clock_ms()))
        await ctx.feedback.restore(new, ctx.beat)

    def _offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition: the oldest offset of a still-pending request, else the position,
        lowered out of the offset span of any request fused since (``safe_commit_offset``)."""
        state = self._state
        oldest: dict[int, dict[str, int]] = {}
        offsets: dict[TopicPartition, int] = {}
        for tp in partitions:
            position = state.positions.get(tp)
            if position is None:
                continue
            table = state.tables.get(tp.partition)
            if table is not None and tp.partition not in oldest:
                oldest[tp.partition] = table.oldest_offsets()
            low = oldest.get(tp.partition, {}).get(tp.topic)
            offset = position if low is None else min(low, position)
            # A repeat is never worse than the original: not inside a fused span.
            spans = self._spans.get(tp)
            if spans:
                committed = state.committed.get(tp)
                if committed is not None:
                    # A span wholly below the last commit is never read again.
                    spans[:] = [span for span in spans if span[1] >= committed]
                offset = safe_commit_offset(offset, spans)
            if state.committed.get(tp) != offset:
                offsets[tp] = offset
        return offsets

    async def commit(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """Wait for every queued output, then commit. The loop holds its lock."""
        state = self._state
        assert state.consumer is not None
        assert self._sink is not None
        await self._sink.flush()
        # The output marks, once every output before them is acknowledged.
        await self._readback.snapshot(state.positions)
        offsets = self._offsets(partitions if partitions is not None else list(state.positions))
        if not offsets:
            return
        metrics = self._ctx.metrics
        if self._producer is not None:
            # Weights before offsets: a crash between them repeats learning, never skips it.
            await self._ctx.feedback.save(self._producer)
        try:
            # Each offset carries its output mark as metadata (worker/runtime/readback.py).
            await state.consumer.commit(self._readback.annotate(offsets))
        except CommitFailedError as exc:
            # The group rebalanced under us; the new owner starts from the last commit.
            metrics.commit(ok=False)
            log.warning("commit failed, the group rebalanced: %s", exc)
        except KafkaError as exc:
            if is_fatal(exc):
                raise
            metrics.commit(ok=False)
            log.warning("commit failed (%s); retried at the next interval", exc)
        else:
            state.committed.update(offsets)
            metrics.commit(ok=True)
            for tp, offset in offsets.items():
                spans = self._spans.get(tp)
                if spans:
                    spans[:] = [span for span in spans if span[1] >= offset]

    async def stop(self) -> None:
        if self._producer is not None:
            budget = self._ctx.config.kafka.shutdown_timeout_ms / 1000
            await close_client(self._producer, budget * 0.2 + 1)
            self._producer = None
        await self._readback.close()
