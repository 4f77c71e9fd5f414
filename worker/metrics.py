"""Prometheus metrics of the worker: one ``Metrics`` object per worker, on a registry the
caller owns, with batch helpers so the hot path makes a few client calls per batch
rather than several per message.

Names follow the Prometheus conventions (prefix ``fusion_``, base units, counters end in
``_total``). Every label has a bounded set of values: configured models, strategies,
statuses, outcomes, DLQ reason codes, topics and partitions; never a request id.
Children known at start are created at 0, so rates and alert rules see a series before
the first event. docs/metrics.md describes every metric and the alert built on it.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from worker._version import __version__
from worker.decode import DLQ_REASONS as DLQ_REASONS
from worker.events import FinishedRequest
from worker.fusion.native import Counted
from worker.fusion.quality import Quality
from worker.metrics_histogram import BATCH_BUCKETS as BATCH_BUCKETS
from worker.metrics_histogram import LATENCY_BUCKETS as LATENCY_BUCKETS
from worker.metrics_histogram import BatchHistogram as BatchHistogram
from worker.metrics_quality import QualityMetrics

log = logging.getLogger(__name__)

EVENT_OUTCOMES = ("accepted", "duplicate", "late", "invalid")
STATUSES = ("complete", "partial", "insufficient", "decided")
COMMIT_OUTCOMES = ("ok", "failed")
TRANSACTION_OUTCOMES = ("committed", "aborted", "fenced")
LOOP_PHASES = ("fetch", "process", "clients", "commit")  # worker/runtime/phases.py
# The model label of invalid events and of names outside the configuration: a model
# name read from a broken payload is untrusted and would make the label unbounded.
UNKNOWN_MODEL = "unknown"


class Metrics:
    """Every metric of one worker, registered on ``registry``.

    ``registry`` defaults to a new ``CollectorRegistry`` (not the process-wide one), so
    several workers or tests coexist; the runtime passes the registry its HTTP server
    serves. ``models`` (the configured model names) and ``strategy`` (the configured
    fusion strategy) fix the label children created at 0 on construction;
    ``output_topics`` does the same for ``fusion_output_records_total``.
    ``process_metrics`` adds the client's standard ``process_*`` (CPU, memory, file
    descriptors) and ``python_*`` (GC, version) metrics to the registry.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        models: Sequence[str] = (),
        strategy: str = "soft_vote",
        output_topics: Sequence[str] = (),
        process_metrics: bool = True,
        accuracy_floor: float = 0.0,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.models = tuple(models)
        self.strategy = strategy
        self._known_models = frozenset(self.models)
        r = self.registry

        self.events = Counter(
            "fusion_events",
            "Input events by model and outcome (accepted, duplicate, late, invalid); "
            f"invalid events carry model={UNKNOWN_MODEL!r}.",
            ["model", "outcome"],
            registry=r,
        )
        self.results = Counter(
            "fusion_results",
            "Fused results published, by strategy and status.",
            ["strategy", "status"],
            registry=r,
        )
        self.pending = Gauge(
            "fusion_pending_requests", "Requests waiting for more models.", registry=r
        )
        self.pending_oldest_age = Gauge(
            "fusion_pending_oldest_age_seconds",
            "Age of the oldest pending request (0 when none is pending).",
            registry=r,
        )
        # One observation per result and one per member: a batch at a time.
        self.join_latency = BatchHistogram(
            "fusion_join_latency_seconds",
            "First event of a request to its fused result.",
            (),
            LATENCY_BUCKETS,
            r,
        )
        self.join_latency.series()
        self.arrival_delay = BatchHistogram(
            "fusion_model_arrival_delay_seconds",
            "First event of a request to this model's event (event time).",
            ("model",),
            LATENCY_BUCKETS,
            r,
        )
        self.missing = Counter(
            "fusion_model_missing",
            "Results fused without this model (partial or insufficient; not decided early).",
            ["model"],
            registry=r,
        )
        self.disagreement = Counter(
            "fusion_model_disagreement",
            "Results whose fused label differs from this model's label.",
            ["model"],
            registry=r,
        )
        self.dead_letters = Counter(
            "fusion_dlq", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=r
        )
        self.lag = Gauge(
            "fusion_consumer_lag",
            "Records between the worker's position and the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.commits = Counter(
            "fusion_commits", "Offset commits by outcome (ok, failed).", ["outcome"], registry=r
        )
        self.transactions = Counter(
            "fusion_transactions",
            "Kafka transactions by outcome (committed, aborted, fenced); exactly-once only.",
            ["outcome"],
            registry=r,
        )
        self.changelog_records = Counter(
            "fusion_changelog_records",
            "Pending-state records (states and tombstones) written to the changelog; "
            "exactly-once only. Per fused result this should stay well below 1.",
            registry=r,
        )
        self.rebalances = Counter(
            "fusion_rebalances", "Consumer group rebalances seen by this worker.", registry=r
        )
        self.batch_size = Histogram(
            "fusion_batch_size",
            "Records per fetched batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.loop_seconds = Counter(
            "fusion_loop_seconds",
            "Wall time of the loop by phase: fetch, process, clients, commit.",
            ["phase"],
            registry=r,
        )
        self.output_records = Counter(
            "fusion_output_records",
            "Records produced, by topic (results, dead letters, late events).",
            ["topic"],
            registry=r,
        )
        self.fetch_paused = Gauge(
            "fusion_fetch_paused",
            "1 while fetching is paused because max_pending requests are pending.",
            registry=r,
        )
        self.bad_traceparents = Counter(
            "fusion_traceparent_invalid",
            "Valid events whose traceparent header was malformed or repeated: ignored "
            "(the event is fused, its trace is not continued).",
            registry=r,
        )
        self.build = Info("fusion_build", "Version of the running worker.", registry=r)
        # Live quality from feedback labels (worker.metrics_quality).
        self.quality = QualityMetrics(r, self.models, accuracy_floor)

        self._initialise(output_topics)
        self.build_info()
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def _initialise(self, output_topics: Sequence[str]) -> None:
        # Children at 0 so that rate() and the alert rules have a series from the start.
        for model in self.models:
            for outcome in EVENT_OUTCOMES[:-1]:
                self.events.labels(model, outcome)
            self.arrival_delay.series(model)
            self.missing.labels(model)
            self.disagreement.labels(model)
        self.events.labels(UNKNOWN_MODEL, "invalid")
        for status in STATUSES:
            self.results.labels(self.strategy, status)
        for reason in DLQ_REASONS:
            self.dead_letters.labels(reason)
        for outcome in COMMIT_OUTCOMES:
            self.commits.labels(outcome)
        for outcome in TRANSACTION_OUTCOMES:
            self.transactions.labels(outcome)
        for topic in output_topics:
            self.output_records.labels(topic)
        for phase in LOOP_PHASES:
            self.loop_seconds.labels(phase)

    # -- once ---------------------------------------------------------------------------

    def build_info(self, version: str = __version__) -> None:
        """Set ``fusion_build_info{version}``. Done on construction; call again only to
        report another version."""
        self.build.info({"version": version})

    # -- per batch ----------------------------------------------------------------------

    def batch(self, n: int) -> None:
        """Record one fetched batch of ``n`` records. Call once per non-empty fetch."""
        self.batch_size.observe(n)

    def count_events(self, model: str, outcome: str, n: int = 1) -> None:
        """Count ``n`` input events of ``model`` with ``outcome`` (accepted, duplicate,
        late). Call once per (model, outcome) per batch, with the batch's tally.

        Invalid events are counted by ``dlq()``, not here. A model outside the configured
        ones is counted as ``unknown``.
        """
        _expect("event", outcome, EVENT_OUTCOMES)
        self.events.labels(self._model(model), outcome).inc(n)

    def dlq(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events sent to the dead-letter topic with ``reason`` (the stable
        code of ``InvalidEvent``). Call once per reason per batch.

        Also counts them in ``fusion_events_total{model="unknown", outcome="invalid"}``,
        so that the events counter covers every record read.
        """
        self.dead_letters.labels(reason).inc(n)
        self.events.labels(UNKNOWN_MODEL, "invalid").inc(n)

    def bad_traceparent(self, n: int = 1) -> None:
        """Count ``n`` events whose ``traceparent`` header was unusable. Once per batch."""
        self.bad_traceparents.inc(n)

    def output(self, topic: str, n: int = 1) -> None:
        """Count ``n`` records produced to ``topic``. Call once per topic per batch, after
        the records are queued."""
        self.output_records.labels(topic).inc(n)

    def observe_results(self, results: Sequence[Mapping[str, Any]]) -> None:
        """Record a batch of fused results: results by strategy and status, missing
        models, members that disagree with the fused label, join latency.

        Call once per fused batch with the result dicts the fusion returned (keys used:
        ``strategy``, ``status``, ``missing``, ``members`` {model: {label, ...}},
        ``label``, ``latency_ms``). A result without a fused label (insufficient, or a
        regression) counts no disagreement.
        """
        statuses: Tally[tuple[str, str]] = Tally()
        missing: Tally[str] = Tally()
        disagree: Tally[str] = Tally()
        latencies_ms: list[float] = []
        # Once per result and member: plain loops, not Counter.update (whose Mapping
        # check alone cost as much as the rest for the usual empty ``missing``).
        for r in results:
            status = r["status"]
            statuses[(r["strategy"], status)] += 1
            if status != "decided":  # decided early: nobody was waited for in vain
                for model in r.get("missing", ()):
                    missing[model] += 1
            fused = r.get("label")
            if fused is not None:
                for model, member in r.get("members", {}).items():
                    label = member.get("label")
                    if label is not None and label != fused:
                        disagree[model] += 1
            latency_ms = r.get("latency_ms")
            if latency_ms is not None:
                latencies_ms.append(latency_ms)
        self._count(statuses, missing, disagree, latencies_ms)

    def observe_counted(self, counted: Counted) -> None:
        """``observe_results`` and ``observe_arrivals`` of a batch the writer counted."""
        self._count(*counted.tallies(), counted.latencies_ms)
        for model, raw in zip(counted.models, counted.arrivals, strict=True):
            if raw:
                self.arrival_delay.observe_ms(raw, self._model(model))

    def _count(
        self,
        statuses: Mapping[tuple[str, str], int],
        missing: Mapping[str, int],
        disagree: Mapping[str, int],
        latencies_ms: Sequence[float],
    ) -> None:
        """Add one batch's tallies to the counters and its latencies to the histogram."""
        self.join_latency.observe_ms(latencies_ms)
        for (strategy, status), n in statuses.items():
            self.results.labels(strategy, status).inc(n)
        for model, n in missing.items():
            self.missing.labels(self._model(model)).inc(n)
        for model, n in disagree.items():
            self.disagreement.labels(self._model(model)).inc(n)

    def observe_arrivals(self, finished: Iterable[FinishedRequest]) -> None:
        """Record, per member of each finished request, the delay from the request's first
        event to this model's event, on event time (``ts``); the first model gets 0.

        Call once per fused batch with the requests the join finished.
        """
        # Delays in ms per series, in observation order; model names outside the
        # configuration share the list of the "unknown" series.
        by_series: dict[str, list[int]] = {}
        by_model: dict[str, list[int]] = {}
        for request in finished:
            first = request.first_ts
            for model, event in request.members.items():
                delays = by_model.get(model)
                if delays is None:
                    delays = by_model[model] = by_series.setdefault(self._model(model), [])
                delays.append(event.ts - first)
        for series, delays in by_series.items():
            self.arrival_delay.observe_ms(delays, series)

    # -- periodic (every commit interval) -------------------------------------------------

    def set_pending(self, n: int, oldest_age_s: float) -> None:
        """Set the pending requests and the age of the oldest (0 when none is pending).
        Call every commit interval (the loop also sets the count after every batch)."""
        self.pending.set(n)
        self.pending_oldest_age.set(oldest_age_s if n else 0.0)

    def set_pending_count(self, n: int) -> None:
        """Set the pending requests alone. Call after every batch."""
        self.pending.set(n)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag (records) of one assigned partition. Call every commit
        interval for each assigned partition whose end offset is known."""
        self.lag.labels(topic, str(partition)).set(lag)

    def set_paused(self, paused: bool) -> None:
        """Say whether fetching is paused at max_pending. Call when it changes."""
        self.fetch_paused.set(1 if paused else 0)

    def commit(self, ok: bool) -> None:
        """Count one offset commit attempt. Call after each commit, ok or failed."""
        self.commits.labels("ok" if ok else "failed").inc()

    def transaction(self, outcome: str) -> None:
        """Count one transaction by outcome: committed, aborted or fenced."""
        _expect("transaction", outcome, TRANSACTION_OUTCOMES)
        self.transactions.labels(outcome).inc()

    def changelog(self, n: int) -> None:
        """Count ``n`` changelog records written in one committed transaction."""
        self.changelog_records.inc(n)

    # -- feedback (labels joined with fused results) --------------------------------------

    def observe_quality(self, snapshot: Mapping[str, Quality]) -> None:
        """Set the windowed accuracy, log loss or MAE per model and for the fused output
        from ``QualityWindows.snapshot()``. Call after each batch of labels."""
        self.quality.observe(snapshot)

    def set_weights(self, weights: Sequence[float]) -> None:
        """Set each configured model's current weight (configured order). Call at start
        and whenever the weights change (adaptive weights: after each update)."""
        self.quality.set_weights(weights)

    def count_feedback(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` label events by outcome (joined, expired, unknown, duplicate)."""
        self.quality.count_feedback(outcome, n)

    # -- rebalances -----------------------------------------------------------------------

    def rebalance(self) -> None:
        """Count one rebalance. Call once per revocation (the start of a rebalance)."""
        self.rebalances.inc()

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition this worker no longer owns, so a stale lag
        does not stay on the dashboard. Call for each revoked partition not reassigned."""
        # remove() ignores a partition that never had a lag series.
        self.lag.remove(topic, str(partition))

    def _model(self, model: str) -> str:
        if self._known_models and model not in self._known_models:
            return UNKNOWN_MODEL
        return model


def _expect(kind: str, outcome: str, outcomes: Sequence[str]) -> None:
    # An outcome outside the fixed set would add a series no dashboard or alert reads.
    if outcome not in outcomes:
        raise ValueError(f"{kind} outcome {outcome!r}: expected one of {outcomes}")
