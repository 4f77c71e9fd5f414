"""At-least-once delivery: one idempotent producer behind the re-sending ``Sink``, and
the commit rule of worker/offsets.py.

Per input partition the offset committed is the oldest pending event's offset or the
position, lowered out of the offset span of any request fused since the last commit
(``safe_commit_offset``), and it is committed only once every output queued before it
was computed is acknowledged: a crash repeats results, never loses one, and a repeat is
fused from all the events of the original.

The commit every ``commit_interval_ms`` does not hold the loop (``commit(wait=False)``):
on the loop, it captures the positions, the offsets and the outputs queued so far
(``Sink.take``); in the background (``InFlight``), it waits for exactly those outputs'
acknowledgements, notes the read-back mark from their offsets, writes the weights, then
commits. The loop goes on fetching and fusing meanwhile. One commit at a time: when the
next interval comes while one is still in flight, that interval is skipped (the next
one captures everything since). Waiting on the loop instead, as a chained commit must,
is what this avoids, and a commit that outlasts an interval is a slow broker, where
committing less often costs nothing. A send that failed sends the next commit down
the loop's own path (``commit()``: flush, re-sending with backoff, then commit), as do
a revocation and the shutdown, which wait for the commit in flight first.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from worker.engine import Step
from worker.offsets import keep_span, merge_spans, safe_commit_offset
from worker.runtime.connect import close_client, producer_options
from worker.runtime.delivery import Context
from worker.runtime.inflight import InFlight
from worker.runtime.readback import ReadBack
from worker.runtime.retry import is_fatal
from worker.runtime.sink import Sink, Taken

log = logging.getLogger(__name__)

# Weight snapshots taken for a commit: their partition numbers and (key, value) records.
Weights = tuple[set[int], list[tuple[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class Capture:
    """What a commit captured on the loop: the consumed positions, the offsets to commit,
    the outputs queued before them, the weight snapshots (partition numbers, records)."""

    positions: dict[TopicPartition, int]
    offsets: dict[TopicPartition, int]
    taken: Taken
    weights: Weights


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
        self._output = context.config.kafka.output_topic
        # The commit in the background; a failed send makes the next commit the loop's.
        self._inflight = InFlight()
        self._resend = False

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
        """Before a fetch: a fatal error of the commit in the background stops the loop."""
        self._inflight.check()

    async def open_due(self) -> None:
        """Nothing to open: an assigned partition is fetched at once."""

    async def emit(self, step: Step) -> None:
        """Keep the fused requests' offset spans, queue the outputs, hand them over."""
        assert self._sink is not None
        spans = self._spans
        for (topic, p), taken in step.spans.items():
            # Merged as they closed (worker/offsets.py's keep_span): a handful a step.
            kept = spans.setdefault(TopicPartition(topic, p), [])
            for span in taken:
                keep_span(kept, span)
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
        # Normally settled at the revocation; a commit started since must not land
        # across the new assignment.
        await self._wait_in_flight()
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
                # Merged, the spans since the last commit are a handful, not thousands.
                merged = merge_spans(spans)
                if committed is not None:
                    # A span wholly below the last commit is never read again.
                    merged = [span for span in merged if span[1] >= committed]
                spans[:] = merged
                offset = safe_commit_offset(offset, merged)
            if state.committed.get(tp) != offset:
                offsets[tp] = offset
        return offsets

    async def commit(
        self, partitions: Collection[TopicPartition] | None = None, *, wait: bool = True
    ) -> None:
        """Commit the offsets of ``partitions`` (default all) once the outputs before them
        are acknowledged. ``wait=False`` (the loop's periodic commit): capture now and
        finish in the background, or skip while a commit is in flight. Otherwise, after
        the commit in flight: flush and commit while the caller waits."""
        if not wait and not self._resend:
            self._inflight.check()
            if self._inflight.busy:
                log.debug("a commit is still in flight: this interval is skipped")
                return
            capture = self._capture()
            if capture is not None:
                self._inflight.start(self._finish(capture))
            return
        await self._wait_in_flight()
        self._inflight.check()
        await self._commit_now(partitions)

    async def _wait_in_flight(self) -> None:
        """Wait for the commit in flight. It may wait for batches still open at its
        capture: hand them to the producer first, or it never ends."""
        if self._inflight.busy and self._sink is not None:
            await self._sink.submit(force=True)
        await self._inflight.wait()

    def _capture(self) -> Capture | None:
        """On the loop: everything a commit needs, as it is now."""
        assert self._sink is not None
        state = self._state
        positions = dict(state.positions)
        offsets = self._offsets(list(positions))
        taken = self._sink.take()
        if not offsets and not taken.sent and not taken.opens:
            self._readback.snapshot(positions, {})
            return None
        weights = self._ctx.feedback.take() if offsets else (set[int](), [])
        return Capture(positions, offsets, taken, weights)

    async def _finish(self, capture: Capture) -> None:
        """In the background: wait for the captured outputs, then commit."""
        assert self._sink is not None
        acked = await self._sink.acknowledged(capture.taken, self._output)
        if acked is None:
            # Back in the sink: the next commit re-sends them on the loop, with backoff.
            self._resend = True
            self._ctx.feedback.unsaved(capture.weights[0])
            log.info("outputs not acknowledged; the next commit re-sends them")
            return
        self._readback.snapshot(capture.positions, acked)
        if capture.offsets:
            await self._write(capture.offsets, capture.weights)

    async def _commit_now(self, partitions: Collection[TopicPartition] | None) -> None:
        """On the loop (it waits): every queued output acknowledged, failures re-sent,
        then the offsets."""
        state = self._state
        assert self._sink is not None
        acked = await self._sink.flush(self._output)
        self._resend = False
        self._readback.snapshot(dict(state.positions), acked)
        offsets = self._offsets(partitions if partitions is not None else list(state.positions))
        if offsets:
            await self._write(offsets, self._ctx.feedback.take())

    async def _write(self, offsets: dict[TopicPartition, int], weights: Weights) -> None:
        """The weights, then the offsets with their read-back marks. A failure is
        counted and logged (the next interval tries again); a fatal one is raised."""
        state = self._state
        assert state.consumer is not None
        metrics = self._ctx.metrics
        try:
            if self._producer is not None:
                # Weights before offsets: a crash between them repeats learning, never
                # skips it.
                await self._ctx.feedback.save(self._producer, weights[1])
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
            return
        self._ctx.feedback.unsaved(weights[0])

    async def stop(self) -> None:
        # A commit still in flight here was not waited for (the shutdown was cut short):
        # not committing is safe.
        await self._inflight.cancel()
        if self._producer is not None:
            budget = self._ctx.config.kafka.shutdown_timeout_ms / 1000
            await close_client(self._producer, budget * 0.2 + 1)
            self._producer = None
        await self._readback.close()
