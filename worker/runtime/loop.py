"""The worker loop (`fusion-worker run`): fetch, run the engine step, hand the step to
the delivery, apply backpressure, beat liveness, apply rebalances between batches.

One asyncio loop: ``getmany`` a batch -> ``engine.step`` (decode, join, fuse) -> the
delivery's ``emit`` -> every ``commit_interval_ms`` the delivery's ``commit``. The
delivery mode (at-least-once, exactly-once) is an object behind the ``Delivery``
protocol (worker/runtime/delivery.py), composed in, not a subclass. The partition state
(``Partitions``) has one owner, this loop: rebalance callbacks hand their work to it
(worker/runtime/handoff.py), run between two batches, never while it emits or commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.engine import Engine
from worker.errors import KafkaSetupError
from worker.fusion import Fuser
from worker.health import Health, HealthServer
from worker.join import JoinTable
from worker.metrics import Metrics
from worker.records import RawRecord
from worker.runtime.backpressure import backpressure
from worker.runtime.connect import admin_client, client_options, close_client, probe_credentials
from worker.runtime.cycles import CycleCollector
from worker.runtime.delivery import Context, Delivery, DeliveryFactory
from worker.runtime.feedback import FeedbackLink, tally_feedback
from worker.runtime.handoff import HandOff, Listener
from worker.runtime.heap import HeapTrimmer
from worker.runtime.partitions import Partitions
from worker.runtime.phases import Phases
from worker.runtime.raw_records import install as install_raw_records
from worker.runtime.retry import Backoff, TopicWatch, fatal_message, is_fatal, retry_until_connected
from worker.runtime.tally import observe_state, tally
from worker.runtime.topics import check_topics
from worker.tracing import trace_step

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# While outputs wait in an open batch for the previous one to be acknowledged, fetch
# with at most this timeout, so that they are handed over soon after the acknowledgement.
HOLD_RECHECK_MS = 2
# After each batch, let the clients' tasks run for this long (see _loop).
YIELD_S = 0.0005


def wall_clock_ms() -> float:
    return time.time() * 1000.0


class Loop:
    """The streaming worker: ``await start()``, ``await run()``, ``await stop()``.

    ``delivery`` builds the delivery mode from the loop's ``Context``; ``self.delivery``
    is that object."""

    def __init__(
        self,
        config: Config,
        delivery: DeliveryFactory,
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
        self.lock = asyncio.Lock()
        self._handoff = HandOff(self.lock)
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()  # set once partitions are assigned
        # The pure step; its join tables (one per open partition number) are the loop's.
        fuser = Fuser(config)
        # Labels and adaptive weights: the engine learns, the link snapshots and restores.
        self.feedback = FeedbackLink(config, fuser)
        engine = Engine(
            config,
            fuser,
            results=False,  # the loop reads the records and counts, not the result dicts
            check_keys=k.check_keys,
            track_touched=delivery.tracks_touched,
            learning=self.feedback.learning,
        )
        self.state = Partitions(engine, self.metrics)
        self.engine = engine
        # Free the fetch buffers aiokafka drops on pause or seek (issue #14), C heap pages.
        self._cycles, self._heap = CycleCollector(), HeapTrimmer.for_this_process()
        self._phases = Phases(self.metrics)
        connect, beat = self._retry_until_connected, self._beat
        context = Context(config, self.metrics, self.state, beat, connect, self.feedback, clock_ms)
        self.delivery: Delivery = delivery(context)
        self._watch = TopicWatch(k.unknown_topic_timeout_ms)
        self._next_commit = 0.0
        self._started = False
        self._stopped = False
        self._interrupted = False  # run() cancelled its loop: stop() must not commit

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
        await self._retry_until_connected(self._check_cluster)
        consumer = self.state.consumer = AIOKafkaConsumer(
            client_id=cfg.client_id,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_records=cfg.fetch_max_records,
            **self.delivery.consumer_options,
            **opts,
        )
        await self.delivery.start()
        await self._retry_until_connected(consumer.start)
        install_raw_records(consumer)  # getmany then hands over aiokafka's parsed records
        listener = Listener(self.on_revoked, self.on_assigned)
        # Labels share the consumer: their partition p joins the inputs' partition p.
        consumer.subscribe([*cfg.input_topics, *self.feedback.topics()], listener=listener)
        self.health.set_connected(True)
        log.info(
            "started: group %s, inputs %s -> %s, strategy %s, %s",
            cfg.group_id,
            list(cfg.input_topics),
            cfg.output_topic,
            self.config.fusion.strategy,
            cfg.delivery,
        )

    async def _check_cluster(self) -> None:
        await probe_credentials(self.config.kafka)
        async with admin_client(self.config.kafka) as admin:
            await check_topics(admin, self.config.kafka)
            await self.feedback.check(admin)

    async def _retry_until_connected(self, connect: Callable[[], Awaitable[Any]]) -> None:
        """Keep trying while the broker is unreachable; configuration errors stop at once."""
        k = self.config.kafka
        backoff = Backoff(k.retry_backoff_ms)
        await retry_until_connected(
            connect, backoff, k.bootstrap_servers, self._beat, self._stopping
        )

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
        consumer = self.state.consumer
        if consumer is not None and not self._interrupted:
            try:
                async with asyncio.timeout(budget * 0.8):
                    async with self.lock:
                        await self.delivery.commit()
            except TimeoutError:
                # Not committing is safe: what was not acknowledged is read again.
                log.warning(
                    "shutdown: outputs not acknowledged within %.1fs; not committing", budget
                )
            except KafkaError as exc:
                log.warning("shutdown: not committing (%s)", exc)
        if consumer is not None:
            await close_client(consumer, budget * 0.2 + 1)
        await self.delivery.stop()
        if self._server is not None:
            self._server.stop()
        log.info("stopped; %d pending requests left to be read again after a restart", self.pending)

    async def __aenter__(self) -> Loop:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``request_stop()``; transient broker errors are retried, fatal ones
        (worker/runtime/retry.py) raise ``KafkaSetupError``.

        After ``request_stop()`` the current iteration gets half the shutdown budget to
        finish (it may be waiting out an outage); then it is cancelled and ``stop()``
        does not commit, since the cancelled iteration may have joined events whose
        outputs were never queued: they are read again after the restart."""
        loop = asyncio.ensure_future(self._loop())
        stopping = asyncio.ensure_future(self._stopping.wait())
        watch = asyncio.ensure_future(self._watch_topics())
        try:
            await asyncio.wait({loop, stopping, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                # A topic is gone: the loop may be stuck re-sending to it, so it is
                # cancelled, and stop() does not commit (as after a cancelled shutdown).
                self._interrupted = True
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
                watch.result()
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
            watch.cancel()
            loop.cancel()

    async def _loop(self) -> None:
        consumer = self.state.consumer
        assert consumer is not None
        backoff = Backoff(self.config.kafka.retry_backoff_ms)
        self._phases.reset()
        while not self._stopping.is_set():
            self._beat()
            await self._iterate(consumer, backoff)

    async def _iterate(self, consumer: AIOKafkaConsumer, backoff: Backoff) -> None:
        """One batch: the delivery's own work, a fetch, the step, its outputs, and the
        commit when due. Retriable errors back off here. Rebalance work runs under the
        lock, so only while this fetches (see worker/runtime/handoff.py). Each phase's
        wall time is counted (worker/runtime/phases.py)."""
        lap = self._phases.lap
        try:
            async with self.lock:
                await self.delivery.maintain()
            batch = await consumer.getmany(
                timeout_ms=self._fetch_timeout_ms(), max_records=self._max_records()
            )
            lap("fetch")
            async with self.lock:
                await self._process(batch)
                lap("process")
                # getmany returns at once while records are buffered: without this the
                # clients' own tasks (sending the outputs just queued, a few hops through
                # the loop) would only run when the commit waits for them.
                await asyncio.sleep(YIELD_S)
                lap("clients")
                if time.monotonic() >= self._next_commit:
                    await self._periodic()
                    lap("commit")
            backoff.reset()
        except KafkaError as exc:
            if is_fatal(exc):
                raise KafkaSetupError(fatal_message(exc)) from None
            self.health.set_connected(False)
            wait = backoff.next_s()
            log.warning("kafka error in the loop (%s); retrying in %.1fs", exc, wait)
            await asyncio.sleep(wait)

    def _fetch_timeout_ms(self) -> int:
        """Wait for records at most until the next request deadline, so a silent
        model's request is fused on time even when nothing arrives; and, with partitions
        open, until the next commit is due: exactly-once results are readable only once
        committed, and on a quiet input the commit waited for the fetch to time out."""
        timeout = self.config.kafka.fetch_timeout_ms
        if self.delivery.holding():
            timeout = min(timeout, HOLD_RECHECK_MS)
        deadline = self.engine.next_deadline_ms()
        if deadline is not None:
            timeout = min(timeout, max(0, int(deadline - self._clock_ms()) + 1))
        if self.tables:  # _periodic moves _next_commit on even if it skips: no busy loop
            timeout = min(timeout, max(0, int((self._next_commit - time.monotonic()) * 1000) + 1))
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

    async def _process(self, batch: dict[TopicPartition, list[RawRecord]]) -> None:
        """Run the engine step over a fetched batch, emit its outputs, tally it."""
        now = int(self._clock_ms())
        # Parsed records (raw_records.py) or ConsumerRecords, per topic partition.
        step = self.engine.step_runs(batch.items(), now)
        # Before the delivery: a span may rename its result's traceparent.
        trace_step(step)
        self.state.record(step)
        await self.delivery.emit(step)
        if step.records:
            self.health.set_connected(True)
        tally(self.metrics, self.config, step)
        self.feedback.noted(step)
        tally_feedback(self.metrics, step)
        limit = self.config.join.max_pending
        backpressure(self.state, self.metrics, limit, self.delivery.held, self._cycles)
        if not batch:  # idle: a busy loop would at once re-fault the pages a trim frees
            self._heap.maybe_trim()

    async def _periodic(self) -> None:
        self._next_commit = time.monotonic() + self.config.kafka.commit_interval_ms / 1000
        # Every commit_interval_ms; finished in the background (runtime/at_least_once.py).
        await self.delivery.commit(wait=False)
        self._observe_state()

    async def _watch_topics(self) -> None:
        """Its own task, so that it also sees a loop stuck re-sending to a deleted topic."""
        consumer = self.state.consumer
        assert consumer is not None
        k = self.config.kafka
        ours = {*k.input_topics, k.output_topic, k.dlq_topic, k.late_topic} - {""}
        await self._watch.watch(ours, consumer.topics)

    def _observe_state(self) -> None:
        consumer = self.state.consumer
        assert consumer is not None
        observe_state(self.metrics, self.state, self._clock_ms())
        coordinator_known = getattr(consumer._coordinator, "coordinator_id", None) is not None
        self.health.set_connected(coordinator_known)

    # -- rebalances ---------------------------------------------------------------------

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: flush and commit what we own. Tables stay until we know
        which partitions come back, so kept partitions continue without re-reading."""
        await self._handoff.run(lambda: self.delivery.commit(revoked))
        self.metrics.rebalance()
        log.info("partitions revoked: %s", _fmt(revoked))

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """After a rebalance: hand the new assignment to the loop, which applies it
        between two batches (``_apply``), never while it emits or commits."""
        consumer = self.state.consumer
        assert consumer is not None
        if self.delivery.opens_partitions:
            # aiokafka may fetch a new partition before the callback returns: pause the
            # ones not open yet at once (the fetcher drops what it fetched for them).
            # Pausing touches only the consumer, not the partition state.
            consumer.pause(*[tp for tp in assigned if tp.partition not in self.tables])
        await self._handoff.run(lambda: self._apply(assigned))
        if self.delivery.opens_partitions:
            # Open them now: the fetch under way would hold the loop, and them paused,
            # until its timeout (about 100 ms at every start). An error is left to the
            # loop: they stay to be opened, and its own maintain() meets it again.
            with contextlib.suppress(Exception):
                await self._handoff.run(self.delivery.open_due)
        self.health.set_assigned(bool(assigned))
        if assigned:
            self.assigned.set()
        log.info("partitions assigned: %s", _fmt(assigned))

    async def _apply(self, assigned: list[TopicPartition]) -> None:
        """Where an assignment is applied: keep the tables of partitions that stay, let
        the delivery drop what it lost and take on the new ones, seek kept partitions
        to our position."""
        self._cycles.mark()  # seeks drop buffered records in cycles too
        new = self.state.apply(assigned)
        # Only the partition numbers we own are ours to snapshot.
        self.feedback.keep(self.state.owned)
        await self.delivery.assigned(assigned, new)
        self.state.resume_kept(assigned)


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"
