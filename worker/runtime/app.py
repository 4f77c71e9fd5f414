"""The streaming worker (`fusion-worker run`): consume, join, fuse, publish, commit.

One asyncio loop: ``getmany`` a batch -> decode -> join tables (one per input partition
number) -> fuse what finished -> queue the outputs -> every ``commit_interval_ms``
wait for the outputs and commit, per partition, the offset of the oldest event of a
still-pending request (at-least-once: a crash repeats results, never loses one).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.engine import Engine, OutRecord, Step
from worker.errors import FusionError, KafkaSetupError
from worker.fusion import Fuser
from worker.health import Health, HealthServer
from worker.join import JoinTable
from worker.metrics import Metrics
from worker.offsets import safe_commit_offset
from worker.runtime.connect import (
    admin_client,
    client_options,
    close_client,
    probe_credentials,
    producer_options,
)
from worker.runtime.cycles import CycleCollector
from worker.runtime.feedback import FeedbackLink, tally_feedback
from worker.runtime.readback import ReadBack
from worker.runtime.retry import Backoff, is_fatal
from worker.runtime.sink import Divert, Sink
from worker.runtime.topics import check_topics
from worker.tracing import trace_step  # hook (trace)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Resume fetching once pending requests fall below this share of max_pending, so the
# consumer does not flap between paused and resumed on every request.
RESUME_SHARE = 0.9
# While outputs wait in an open batch for the previous one to be acknowledged, fetch
# with at most this timeout, so that they are handed over soon after the acknowledgement.
HOLD_RECHECK_MS = 2
# After each batch, let the clients' tasks run for this long (see run()).
YIELD_S = 0.0005
# The cyclic garbage collector's thresholds once running (see tune_gc).
GC_THRESHOLDS = (50_000, 20, 100)


def wall_clock_ms() -> float:
    return time.time() * 1000.0


class Worker:
    """The at-least-once streaming worker. ``await start()``, ``await run()``, ``await stop()``."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock_ms: Clock = wall_clock_ms,
    ) -> None:
        self.config = config
        self._clock_ms = clock_ms
        self.registry = registry if registry is not None else CollectorRegistry()
        k = config.kafka
        self.metrics = Metrics(
            self.registry,
            models=config.model_names,
            strategy=config.fusion.strategy,
            output_topics=[t for t in (k.output_topic, k.dlq_topic, k.late_topic) if t],
            accuracy_floor=config.metrics.accuracy_floor,
        )
        self.health = Health(config.metrics.liveness_timeout_ms / 1000)
        self._server: HealthServer | None = None
        # The pure step; its join tables (one per open partition number) are the loop's.
        fuser = Fuser(config)
        self.feedback = FeedbackLink(config, fuser)  # feedback hook: labels and weights
        self.engine = Engine(
            config,
            fuser,
            check_keys=k.check_keys,
            track_touched=self._tracks_touched,
            learning=self.feedback.learning,  # feedback hook
        )
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        # Per input partition, the (first, last) offsets of requests fused from it that a
        # commit may still fall inside (see worker/offsets.py); pruned at each commit.
        self._spans: dict[TopicPartition, list[tuple[int, int]]] = {}
        # The partition numbers of the last assignment the loop applied.
        self.owned: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._sink: Sink | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()  # set once partitions are assigned
        self._paused = False
        # leak fix (issue #14): frees the fetch buffers aiokafka drops on pause/seek.
        self._cycles = CycleCollector()
        self._next_commit = 0.0
        self._started = False
        self._stopped = False
        self._interrupted = False  # run() cancelled its loop: stop() must not commit
        # Hook (read-back, #14.2): at-least-once only; exactly-once has its changelog.
        self._readback = None if k.exactly_once else ReadBack(config, self._beat)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying while the broker is away), check the topics, subscribe."""
        if self._started:
            return
        self._started = True
        cfg = self.config.kafka
        if self.config.metrics.enabled:
            self._server = HealthServer(
                self.health, self.registry, self.config.metrics.host, self.config.metrics.port
            )
            self._server.start()
        opts = client_options(cfg)
        await self._retry_until_connected(lambda: self._check_cluster(opts))
        self._consumer = AIOKafkaConsumer(
            client_id=cfg.client_id,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_records=cfg.fetch_max_records,
            **self._consumer_options(),
            **opts,
        )
        await self._start_producer(opts)
        await self._retry_until_connected(self._consumer.start)
        topics = [*cfg.input_topics, *self.feedback.topics()]  # feedback hook: + labels
        self._consumer.subscribe(topics, listener=_Listener(self))
        self.health.set_connected(True)
        log.info(
            "started: group %s, inputs %s -> %s, strategy %s, %s",
            cfg.group_id,
            list(cfg.input_topics),
            cfg.output_topic,
            self.config.fusion.strategy,
            cfg.delivery,
        )

    def _consumer_options(self) -> dict[str, Any]:
        return {}

    async def _start_producer(self, opts: dict[str, Any]) -> None:
        """One idempotent producer for every output (the exactly-once worker has one
        transactional producer per partition instead)."""
        producer = await self._renew_producer()
        self._sink = Sink(
            producer,
            self.config.kafka.retry_backoff_ms,
            on_wait=self._beat,
            renew=self._renew_producer,
            divert=self._divert(),
        )

    def _divert(self) -> Divert:
        """Fused results too large for the output topic go to the DLQ, counted."""
        k = self.config.kafka

        def count() -> None:
            self.metrics.dlq("too_large")
            self.metrics.output(k.dlq_topic, 1)

        return Divert(k.output_topic, k.dlq_topic, count)

    async def _renew_producer(self) -> AIOKafkaProducer:
        """Start a new idempotent producer (a new producer id) in place of the current one.

        The sink asks for one after the broker refused a batch: aiokafka does not reset an
        idempotent producer's sequence numbers then, so every later batch to that
        partition would fail with OutOfOrderSequenceNumber."""
        old, self._producer = (
            self._producer,
            AIOKafkaProducer(**producer_options(self.config.kafka)),
        )
        if old is not None:
            await close_client(old, 5.0)
        await self._retry_until_connected(self._producer.start)
        return self._producer

    async def _check_cluster(self, opts: dict[str, Any]) -> None:
        await probe_credentials(self.config.kafka)
        async with admin_client(self.config.kafka) as admin:
            await check_topics(admin, self.config.kafka)
            await self.feedback.check(admin)  # feedback hook: labels and weights topics

    async def _retry_until_connected(self, connect: Callable[[], Any]) -> None:
        """Keep trying while the broker is unreachable; configuration errors stop at once."""
        backoff = Backoff(self.config.kafka.retry_backoff_ms)
        while True:
            self._beat()
            try:
                await connect()
                return
            except FusionError:
                raise
            except KafkaError as exc:
                if is_fatal(exc):
                    where = self.config.kafka.bootstrap_servers
                    raise KafkaSetupError(
                        f"cannot use {where}: {type(exc).__name__}: {exc}"
                    ) from None
                if self._stopping.is_set():
                    raise KafkaSetupError(f"stopped while connecting: {exc}") from None
                wait = backoff.next_s()
                log.warning("broker not reachable (%s); retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)

    def _beat(self) -> None:
        """Liveness: the loop is alive (also while it waits out an outage)."""
        self.health.beat(time.monotonic())

    def request_stop(self) -> None:
        """Ask the loop to finish: it stops fetching, flushes, commits and returns."""
        self._stopping.set()

    async def stop(self) -> None:
        """Flush outputs, commit, close the clients. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        budget = self.config.kafka.shutdown_timeout_ms / 1000
        if self._consumer is not None and not self._interrupted:
            try:
                async with asyncio.timeout(budget * 0.8):
                    async with self._lock:
                        await self._commit()
            except TimeoutError:
                # Not committing is safe: what was not acknowledged is read again.
                log.warning(
                    "shutdown: outputs not acknowledged within %.1fs; not committing", budget
                )
        for client in (self._consumer, self._producer):
            if client is not None:
                await close_client(client, budget * 0.2 + 1)
        if self._readback is not None:  # hook (read-back): its reader
            await self._readback.close()
        if self._server is not None:
            self._server.stop()
        pending = sum(len(t) for t in self.tables.values())
        log.info("stopped; %d pending requests left to be read again after a restart", pending)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``request_stop()``; transient broker errors are retried, never fatal.

        After ``request_stop()`` the current iteration gets half the shutdown budget to
        finish (it may be waiting out an outage); then it is cancelled and ``stop()``
        does not commit, since the cancelled iteration may have joined events whose
        outputs were never queued: they are read again after the restart."""
        loop = asyncio.ensure_future(self._loop())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({loop, stopping}, return_when=asyncio.FIRST_COMPLETED)
            budget = self.config.kafka.shutdown_timeout_ms / 2000
            if not loop.done():
                await asyncio.wait({loop}, timeout=budget)
            if not loop.done():
                log.warning("shutdown: the loop did not finish within %.1fs; cancelled", budget)
                self._interrupted = True
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            else:
                loop.result()
        finally:
            stopping.cancel()
            loop.cancel()

    async def _loop(self) -> None:
        assert self._consumer is not None
        backoff = Backoff(self.config.kafka.retry_backoff_ms)
        while not self._stopping.is_set():
            self._beat()
            try:
                await self._maintain()
                batch = await self._consumer.getmany(
                    timeout_ms=self._fetch_timeout_ms(), max_records=self._max_records()
                )
                async with self._lock:
                    await self._process(batch)
                    # getmany returns at once while records are buffered: without this
                    # the clients' own tasks (sending the outputs just queued, which
                    # takes them a few hops through the loop) would only run when the
                    # commit waits for them.
                    await asyncio.sleep(YIELD_S)
                    if time.monotonic() >= self._next_commit:
                        await self._periodic()
                backoff.reset()
            except KafkaError as exc:
                if is_fatal(exc):
                    raise KafkaSetupError(f"{type(exc).__name__}: {exc}") from None
                self.health.set_connected(False)
                wait = backoff.next_s()
                log.warning("kafka error in the loop (%s); retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)

    def _fetch_timeout_ms(self) -> int:
        """Wait for records at most until the next request deadline, so a silent
        model's request is fused on time even when nothing arrives."""
        timeout = self.config.kafka.fetch_timeout_ms
        if self._holding():
            timeout = min(timeout, HOLD_RECHECK_MS)
        deadline = self.engine.next_deadline_ms()
        if deadline is not None:
            timeout = min(timeout, max(0, int(deadline - self._clock_ms()) + 1))
        return timeout

    def _max_records(self) -> int:
        # Never fetch more than could open new requests up to max_pending.
        room = self.config.join.max_pending - self.pending
        return max(1, min(self.config.kafka.fetch_max_records, room))

    @property
    def pending(self) -> int:
        return self.engine.pending

    @property
    def tables(self) -> dict[int, JoinTable]:
        """The engine's join tables, by partition number."""
        return self.engine.tables

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Run the engine step over a fetched batch, queue its outputs, tally it."""
        now = int(self._clock_ms())
        # ConsumerRecords have what the engine reads (engine.Record): no conversion.
        step = self.engine.step([r for records in batch.values() for r in records], now)
        trace_step(step)  # hook (trace): spans of fused requests; may rename their traceparent
        for (topic, partition), position in step.positions.items():
            self._positions[TopicPartition(topic, partition)] = position
        if self._tracks_spans:
            spans = self._spans
            for done, p in zip(step.finished, step.result_partitions, strict=True):
                if done.spans is not None:
                    for topic, span in done.spans.items():
                        spans.setdefault(TopicPartition(topic, p), []).append(span)
        if self._tracks_touched:
            for p, ids in step.touched.items():
                self._touched(p, ids)
        for p, recs in step.outputs.items():
            if recs:
                await self._emit(p, recs)
        await self._emitted()
        if step.records:
            self.health.set_connected(True)
        tally(self.metrics, self.config, step)
        self.feedback.noted(step)  # feedback hook: weights to snapshot
        tally_feedback(self.metrics, step)  # feedback hook: metrics
        self._backpressure()

    # -- delivery hooks (the exactly-once worker overrides these) -----------------------

    # Whether _touched wants the request ids (the at-least-once worker does not).
    _tracks_touched = False
    # Whether commits must stay out of fused requests' offset spans (exactly-once
    # commits the position: its pending state is in the changelog).
    _tracks_spans = True

    def _touched(self, partition: int, request_ids: list[str]) -> None:
        """Requests whose pending state changed (opened, grew or finished)."""

    async def _emit(self, partition: int, records: list[OutRecord]) -> None:
        """Queue the outputs of one input partition."""
        assert self._sink is not None
        await self._sink.write(records)

    async def _emitted(self) -> None:
        """After the ``_emit`` calls of a batch: hand what was queued to the producer."""
        assert self._sink is not None
        await self._sink.submit()

    def _holding(self) -> bool:
        """Whether outputs wait for the producer: the loop comes back for them soon."""
        return self._sink is not None and self._sink.holding

    async def _maintain(self) -> None:
        """Work of the loop's own before each fetch (the exactly-once worker opens the
        partitions assigned to it here)."""

    def _held(self) -> set[int]:
        """Partition numbers that stay paused whatever the backpressure says."""
        return set()

    def _adopt(self, numbers: set[int]) -> None:
        """Take on newly assigned partition numbers: an empty table each (at-least-once
        reads them from the committed offset)."""
        for p in numbers:
            self.engine.open(p)

    def _backpressure(self) -> None:
        """Pause every partition at max_pending; resume below RESUME_SHARE of it.
        Requests still finish by their deadlines while paused, so nothing is dropped."""
        assert self._consumer is not None
        pending, limit = self.pending, self.config.join.max_pending
        if not self._paused and pending >= limit:
            self._consumer.pause(*self._consumer.assignment())
            self._paused = True
            self.metrics.set_paused(True)
            log.info("paused fetching: %d pending requests (max_pending %d)", pending, limit)
        elif self._paused and pending < limit * RESUME_SHARE:
            held = self._held()
            self._consumer.resume(
                *[tp for tp in self._consumer.assignment() if tp.partition not in held]
            )
            self._paused = False
            self.metrics.set_paused(False)
            log.info("resumed fetching: %d pending requests", pending)
            # leak fix (issue #14): the paused fetches dropped buffered records in cycles.
            self._cycles.mark()
        self._cycles.maybe_collect()  # leak fix (issue #14)

    async def _periodic(self) -> None:
        self._next_commit = time.monotonic() + self.config.kafka.commit_interval_ms / 1000
        await self._commit()
        self._observe_state()

    def _observe_state(self) -> None:
        assert self._consumer is not None
        now = self._clock_ms()
        opened = self.engine.oldest_opened_ms()
        self.metrics.set_pending(self.pending, (now - opened) / 1000 if opened is not None else 0.0)
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                self.metrics.set_lag(tp.topic, tp.partition, max(0, high - position))
        coordinator_known = getattr(self._consumer._coordinator, "coordinator_id", None) is not None
        self.health.set_connected(coordinator_known)

    # -- offsets ----------------------------------------------------------------------

    def _commit_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition: the oldest offset of a still-pending request, else the position,
        lowered out of the offset span of any request fused since (``safe_commit_offset``)."""
        oldest: dict[int, dict[str, int]] = {}
        offsets: dict[TopicPartition, int] = {}
        for tp in partitions:
            position = self._positions.get(tp)
            if position is None:
                continue
            table = self.tables.get(tp.partition)
            if table is not None and tp.partition not in oldest:
                oldest[tp.partition] = table.oldest_offsets()
            low = oldest.get(tp.partition, {}).get(tp.topic)
            offset = position if low is None else min(low, position)
            # A repeat is never worse than the original: not inside a fused span.
            spans = self._spans.get(tp)
            if spans:
                committed = self._committed.get(tp)
                if committed is not None:
                    # A span wholly below the last commit is never read again.
                    spans[:] = [span for span in spans if span[1] >= committed]
                offset = safe_commit_offset(offset, spans)
            if self._committed.get(tp) != offset:
                offsets[tp] = offset
        return offsets

    async def _commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Wait for every queued output, then commit. Callers hold ``self._lock``."""
        assert self._consumer is not None
        assert self._sink is not None
        await self._sink.flush()
        if self._readback is not None:  # hook (read-back): output marks, before committing
            await self._readback.snapshot(self._positions)
        offsets = self._commit_offsets(
            partitions if partitions is not None else list(self._positions)
        )
        if not offsets:
            return
        if self._producer is not None:
            await self.feedback.save(self._producer)  # feedback hook: weights before offsets
        try:
            # Hook (read-back): each offset carries its output mark as metadata.
            await self._consumer.commit(
                offsets if self._readback is None else self._readback.annotate(offsets)
            )
        except CommitFailedError as exc:
            # The group rebalanced under us; the new owner starts from the last commit.
            self.metrics.commit(ok=False)
            log.warning("commit failed, the group rebalanced: %s", exc)
        except KafkaError as exc:
            self.metrics.commit(ok=False)
            log.warning("commit failed (%s); retried at the next interval", exc)
        else:
            self._committed.update(offsets)
            self.metrics.commit(ok=True)
            for tp, offset in offsets.items():
                spans = self._spans.get(tp)
                if spans:
                    spans[:] = [span for span in spans if span[1] >= offset]

    # -- rebalances ---------------------------------------------------------------------

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: flush and commit what we own. Tables stay until we know
        which partitions come back, so kept partitions continue without re-reading."""
        async with self._lock:
            await self._commit(revoked)
        self.metrics.rebalance()
        log.info("partitions revoked: %s", _fmt(revoked))

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """After a rebalance: apply the new assignment between two batches of the loop
        (under its lock), never while it emits or commits."""
        async with self._lock:
            await self._apply_assignment(assigned)
        self.health.set_assigned(bool(assigned))
        if assigned:
            self.assigned.set()
        log.info("partitions assigned: %s", _fmt(assigned))

    async def _apply_assignment(self, assigned: list[TopicPartition]) -> None:
        """Keep the tables of partitions that stay, drop the others, adopt new ones.
        Callers hold ``self._lock``."""
        assert self._consumer is not None
        numbers = {tp.partition for tp in assigned}
        self.owned = numbers
        self._cycles.mark()  # leak fix (issue #14): seeks drop buffered records too
        for p in list(self.tables):
            if p not in numbers:
                self.engine.close(p)
        for tp in list(self._positions):
            if tp not in assigned:
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)
                self._spans.pop(tp, None)
                self.metrics.forget_partition(tp.topic, tp.partition)
        self.feedback.keep(numbers)  # feedback hook: only ours to snapshot
        new = numbers - set(self.tables)
        self._adopt(new)
        if self._readback is not None:  # hook (read-back): requests fused before us
            await self._readback.assigned(assigned, new, self.tables, int(self._clock_ms()))
        if not self.config.kafka.exactly_once:  # exactly-once restores when it opens them
            await self.feedback.restore(new, self._beat)  # feedback hook: resume weights
        for tp in assigned:
            # A partition we kept: continue where we were, not from the commit
            # (which sits below our pending requests and would re-fuse some).
            if tp in self._positions:
                self._consumer.seek(tp, self._positions[tp])
        if self._paused:
            self._consumer.pause(*assigned)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._worker.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._worker.on_assigned(list(assigned))


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"


def tally(metrics: Metrics, config: Config, step: Step) -> None:
    """Count what one engine step did (once per batch, not per record)."""
    k = config.kafka
    if step.results:
        metrics.output(k.output_topic, len(step.results))
        metrics.observe_results(step.results)
        metrics.observe_arrivals(step.finished)
    if step.dead_letters:
        metrics.output(k.dlq_topic, step.dead_letters.total())
    if step.late and k.late_topic:
        metrics.output(k.late_topic, step.late)
    if step.records:
        metrics.batch(step.records)
    for model, count in step.accepted.items():
        metrics.count_events(model, "accepted", count)
    for (model, kind), count in step.other.items():
        metrics.count_events(model, kind, count)
    for reason, count in step.dead_letters.items():
        metrics.dlq(reason, count)
    if step.bad_traceparents:  # hook (trace)
        metrics.bad_traceparent(step.bad_traceparents)


def tune_gc() -> None:
    """After start-up: put what start-up built (modules, config, clients) out of the
    cyclic collector's sight, and collect young objects less often.

    The hot path allocates a dozen containers per result, nearly all freed at once by
    reference counting; with the default threshold (700) the collector kept walking them
    for nothing, about a fifth of the worker's CPU (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
