"""worker.metrics: names, pre-initialised children and the batch helpers, read back from a
fresh registry with get_sample_value."""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, seed
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from worker._version import __version__
from worker.events import FinishedRequest, PredictionEvent
from worker.metrics import (
    DLQ_REASONS,
    LATENCY_BUCKETS,
    LOOP_PHASES,
    STATUSES,
    UNKNOWN_MODEL,
    Metrics,
)

MODELS = ("bert", "roberta", "distil")
LABELS = ("negative", "neutral", "positive")
ALLOWED_LABELS = {
    "model",
    "strategy",
    "status",
    "outcome",
    "reason",
    "topic",
    "partition",
    "phase",
}


def make_metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry, models=MODELS, strategy="soft_vote"), registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def result(
    status: str = "complete",
    label: str | None = "positive",
    members: dict[str, str] | None = None,
    missing: tuple[str, ...] = (),
    latency_ms: float = 12.0,
) -> dict[str, Any]:
    members = dict.fromkeys(MODELS, "positive") if members is None else members
    return {
        "request_id": "r-1",
        "strategy": "soft_vote",
        "status": status,
        "label": label,
        "members": {m: {"weight": 1.0, "label": lab} for m, lab in members.items()},
        "missing": list(missing),
        "latency_ms": latency_ms,
    }


def test_default_registry_is_private() -> None:
    """Two Metrics() without a registry coexist: each gets its own, not the global one."""
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry


def test_children_known_at_start_exist_at_zero() -> None:
    """Every model x outcome, status, DLQ reason and commit outcome is exposed at 0."""
    _, reg = make_metrics()
    for model in MODELS:
        for outcome in ("accepted", "duplicate", "late"):
            assert value(reg, "fusion_events_total", model=model, outcome=outcome) == 0
        assert value(reg, "fusion_model_missing_total", model=model) == 0
        assert value(reg, "fusion_model_disagreement_total", model=model) == 0
        assert value(reg, "fusion_model_arrival_delay_seconds_count", model=model) == 0
    assert value(reg, "fusion_events_total", model=UNKNOWN_MODEL, outcome="invalid") == 0
    for status in STATUSES:
        assert value(reg, "fusion_results_total", strategy="soft_vote", status=status) == 0
    for reason in DLQ_REASONS:
        assert value(reg, "fusion_dlq_total", reason=reason) == 0
    for outcome in ("ok", "failed"):
        assert value(reg, "fusion_commits_total", outcome=outcome) == 0
    for outcome in ("committed", "aborted", "fenced"):
        assert value(reg, "fusion_transactions_total", outcome=outcome) == 0
    assert value(reg, "fusion_rebalances_total") == 0


def test_loop_phases_are_pre_initialised() -> None:
    """Each phase of the loop has a fusion_loop_seconds_total series at 0 from the start."""
    _, reg = make_metrics()
    for phase in LOOP_PHASES:
        assert value(reg, "fusion_loop_seconds_total", phase=phase) == 0


def test_set_pending_count_leaves_the_oldest_age() -> None:
    """set_pending_count (after every batch) sets the count and leaves the age that
    set_pending (every commit interval) set."""
    m, reg = make_metrics()
    m.set_pending(5, 2.5)
    m.set_pending_count(7)
    assert value(reg, "fusion_pending_requests") == 7
    assert value(reg, "fusion_pending_oldest_age_seconds") == 2.5


def test_output_topics_are_pre_initialised() -> None:
    """Topics passed as output_topics have an output counter at 0."""
    reg = CollectorRegistry()
    Metrics(reg, models=MODELS, output_topics=("fused", "fusion-dlq"))
    assert value(reg, "fusion_output_records_total", topic="fused") == 0
    assert value(reg, "fusion_output_records_total", topic="fusion-dlq") == 0


def test_names_and_labels_follow_conventions() -> None:
    """Every family is prefixed fusion_, every counter sample ends in _total, and no label
    outside the bounded set (no request id) exists."""
    _, reg = make_metrics()
    for family in reg.collect():
        if family.name.startswith(("process_", "python_")):
            continue  # the client's standard collectors
        assert family.name.startswith("fusion_"), family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le", "version"} <= ALLOWED_LABELS, sample
            if family.type == "counter" and not sample.name.endswith("_created"):
                assert sample.name.endswith("_total"), sample.name


def test_process_metrics_are_optional() -> None:
    """process_* and python_* metrics are added by default and left out on request."""
    with_process, without = CollectorRegistry(), CollectorRegistry()
    Metrics(with_process)
    Metrics(without, process_metrics=False)
    assert value(with_process, "process_cpu_seconds_total") is not None
    assert value(without, "process_cpu_seconds_total") is None
    assert all(f.name.startswith("fusion_") for f in without.collect())


def test_build_info_carries_the_version() -> None:
    """fusion_build_info{version} is 1 with the package version."""
    _, reg = make_metrics()
    assert value(reg, "fusion_build_info", version=__version__) == 1


def test_count_events_adds_n() -> None:
    """count_events adds the batch tally to its (model, outcome) child."""
    m, reg = make_metrics()
    m.count_events("bert", "accepted", 5)
    m.count_events("bert", "accepted")
    m.count_events("roberta", "late", 2)
    assert value(reg, "fusion_events_total", model="bert", outcome="accepted") == 6
    assert value(reg, "fusion_events_total", model="roberta", outcome="late") == 2


def test_count_events_maps_unconfigured_model_to_unknown() -> None:
    """A model name outside the configuration is counted as 'unknown' (bounded labels)."""
    m, reg = make_metrics()
    m.count_events("someone-else", "accepted", 3)
    assert value(reg, "fusion_events_total", model=UNKNOWN_MODEL, outcome="accepted") == 3
    assert value(reg, "fusion_events_total", model="someone-else", outcome="accepted") is None


def test_count_events_rejects_an_unknown_outcome() -> None:
    """An outcome outside accepted/duplicate/late/invalid is a bug: ValueError names it."""
    m, _ = make_metrics()
    with pytest.raises(ValueError, match="'dropped'"):
        m.count_events("bert", "dropped")


def test_dlq_counts_reason_and_invalid_event() -> None:
    """dlq() counts the reason and the invalid events under model 'unknown'."""
    m, reg = make_metrics()
    m.dlq("json", 2)
    m.dlq("schema")
    assert value(reg, "fusion_dlq_total", reason="json") == 2
    assert value(reg, "fusion_dlq_total", reason="schema") == 1
    assert value(reg, "fusion_events_total", model=UNKNOWN_MODEL, outcome="invalid") == 3


def test_observe_results_counts_statuses_and_missing() -> None:
    """Results are counted by strategy and status; each missing model once per result,
    except in a result decided early (nobody was waited for in vain)."""
    m, reg = make_metrics()
    m.observe_results(
        [
            result(),
            result(status="partial", members={"bert": "positive"}, missing=("roberta", "distil")),
            result(status="insufficient", label=None, members={}, missing=MODELS),
            result(status="decided", members={"bert": "positive"}, missing=("roberta", "distil")),
        ]
    )
    for status in STATUSES:
        assert value(reg, "fusion_results_total", strategy="soft_vote", status=status) == 1
    assert value(reg, "fusion_model_missing_total", model="bert") == 1
    assert value(reg, "fusion_model_missing_total", model="roberta") == 2
    assert value(reg, "fusion_model_missing_total", model="distil") == 2


def test_observe_results_counts_disagreement_with_the_fused_label() -> None:
    """A member whose label differs from the fused label counts one disagreement."""
    m, reg = make_metrics()
    m.observe_results([result(members={"bert": "positive", "roberta": "negative"})])
    assert value(reg, "fusion_model_disagreement_total", model="roberta") == 1
    assert value(reg, "fusion_model_disagreement_total", model="bert") == 0


def test_no_disagreement_without_a_fused_label() -> None:
    """An insufficient result (label None) counts no disagreement for its members."""
    m, reg = make_metrics()
    m.observe_results(
        [result(status="insufficient", label=None, members={"bert": "negative"}, missing=())]
    )
    assert value(reg, "fusion_model_disagreement_total", model="bert") == 0


def test_join_latency_is_observed_in_seconds() -> None:
    """latency_ms of each result becomes one observation in seconds."""
    m, reg = make_metrics()
    m.observe_results([result(latency_ms=4.0), result(latency_ms=2000.0)])
    assert value(reg, "fusion_join_latency_seconds_count") == 2
    assert value(reg, "fusion_join_latency_seconds_sum") == pytest.approx(2.004)
    assert value(reg, "fusion_join_latency_seconds_bucket", le="0.005") == 1


result_strategy = st.builds(
    result,
    status=st.sampled_from(STATUSES),
    label=st.none() | st.sampled_from(LABELS),
    members=st.dictionaries(st.sampled_from(MODELS), st.sampled_from(LABELS)),
    missing=st.lists(st.sampled_from(MODELS), unique=True).map(tuple),
    latency_ms=st.floats(0, 60_000),
)


@given(st.lists(result_strategy, max_size=30))
def test_observe_results_matches_a_per_result_count(results: list[dict[str, Any]]) -> None:
    """The batch helper's counters equal a naive count over the results one by one."""
    m, reg = make_metrics()
    m.observe_results(results)
    statuses = Counter(r["status"] for r in results)
    missing = Counter(model for r in results if r["status"] != "decided" for model in r["missing"])
    disagree = Counter(
        model
        for r in results
        if r["label"] is not None
        for model, member in r["members"].items()
        if member["label"] != r["label"]
    )
    for status in STATUSES:
        got = value(reg, "fusion_results_total", strategy="soft_vote", status=status)
        assert got == statuses[status]
    for model in MODELS:
        assert value(reg, "fusion_model_missing_total", model=model) == missing[model]
        assert value(reg, "fusion_model_disagreement_total", model=model) == disagree[model]
    assert value(reg, "fusion_join_latency_seconds_count") == len(results)


def finished(first_ts: int, ts: dict[str, int]) -> FinishedRequest:
    members = {m: PredictionEvent("r", m, t, probs=(0.2, 0.3, 0.5)) for m, t in ts.items()}
    return FinishedRequest("r", members, first_ts, 0, 0, expired=False)


def test_arrival_delay_is_measured_from_the_first_event() -> None:
    """Each member's delay is its event time minus the request's first event time."""
    m, reg = make_metrics()
    m.observe_arrivals([finished(1000, {"bert": 1000, "roberta": 1250})])
    assert value(reg, "fusion_model_arrival_delay_seconds_sum", model="bert") == 0
    assert value(reg, "fusion_model_arrival_delay_seconds_sum", model="roberta") == 0.25
    assert value(reg, "fusion_model_arrival_delay_seconds_count", model="distil") == 0


def test_arrival_delay_is_never_negative() -> None:
    """A member stamped before the first event received (clock skew) counts as 0."""
    m, reg = make_metrics()
    m.observe_arrivals([finished(1000, {"bert": 900})])
    assert value(reg, "fusion_model_arrival_delay_seconds_sum", model="bert") == 0
    assert value(reg, "fusion_model_arrival_delay_seconds_count", model="bert") == 1


# -- the batched histograms against one observe() per value ----------------------------

HISTOGRAMS = ("fusion_join_latency_seconds", "fusion_model_arrival_delay_seconds")


class _Only:
    """The families of ``names`` in a registry, for generate_latest."""

    def __init__(self, registry: CollectorRegistry, names: tuple[str, ...]) -> None:
        self.registry, self.names = registry, names

    def collect(self) -> list[Metric]:
        return [f for f in self.registry.collect() if f.name in self.names]


def per_value_histograms(
    batches: list[tuple[list[dict[str, Any]], list[FinishedRequest]]],
) -> bytes:
    """The exposition of the two histograms as the client's Histogram gives it with one
    observe() per result and per member: how the worker observed them before batching."""
    reg = CollectorRegistry()
    latency = Histogram(
        "fusion_join_latency_seconds",
        "First event of a request to its fused result.",
        buckets=LATENCY_BUCKETS,
        registry=reg,
    )
    arrival = Histogram(
        "fusion_model_arrival_delay_seconds",
        "First event of a request to this model's event (event time).",
        ["model"],
        buckets=LATENCY_BUCKETS,
        registry=reg,
    )
    for model in MODELS:
        arrival.labels(model)
    for results, finished in batches:
        for r in results:
            latency.observe(max(0.0, r["latency_ms"] / 1000.0))
        for request in finished:
            for model, event in request.members.items():
                series = model if model in MODELS else UNKNOWN_MODEL
                arrival.labels(series).observe(max(0, event.ts - request.first_ts) / 1000.0)
    return generate_latest(_Only(reg, HISTOGRAMS))  # type: ignore[arg-type]


# Latencies right on the bucket bounds as well as anywhere, and arrival delays from
# models inside and outside the configuration, before and after the first event.
latency_ms = st.sampled_from([b * 1000 for b in LATENCY_BUCKETS]) | st.integers(-5, 40_000)
arrivals = st.builds(
    lambda first, delays: FinishedRequest(
        "r",
        {m: PredictionEvent("r", m, first + d, probs=(0.2, 0.3, 0.5)) for m, d in delays.items()},
        first,
        0,
        0,
        expired=False,
    ),
    st.integers(0, 2**40),
    st.dictionaries(
        st.sampled_from([*MODELS, "stranger", "other"]),
        st.sampled_from([int(b * 1000) for b in LATENCY_BUCKETS]) | st.integers(-50, 40_000),
    ),
)
batches = st.lists(
    st.tuples(
        st.lists(st.builds(result, latency_ms=latency_ms | st.floats(0, 60_000)), max_size=20),
        st.lists(arrivals, max_size=20),
    ),
    max_size=4,
)


@seed(20261128)
@given(batches)
def test_batched_histograms_expose_what_per_value_observe_gives(
    batches: list[tuple[list[dict[str, Any]], list[FinishedRequest]]],
) -> None:
    """observe_results and observe_arrivals, batch after batch, give exactly the exposition
    text (buckets, count, sum to the last digit, series order) of one observe() per value."""
    with mock.patch("time.time", return_value=1_764_000_000.0):  # the _created series
        m = Metrics(CollectorRegistry(), models=MODELS, process_metrics=False)
        for results, finished in batches:
            m.observe_results(results)
            m.observe_arrivals(finished)
        want = per_value_histograms(batches)
    assert generate_latest(_Only(m.registry, HISTOGRAMS)) == want  # type: ignore[arg-type]


def test_set_pending_sets_count_and_age() -> None:
    """set_pending sets both gauges; with nothing pending the age is 0."""
    m, reg = make_metrics()
    m.set_pending(7, 1.5)
    assert value(reg, "fusion_pending_requests") == 7
    assert value(reg, "fusion_pending_oldest_age_seconds") == 1.5
    m.set_pending(0, 3.0)
    assert value(reg, "fusion_pending_oldest_age_seconds") == 0


def test_forget_partition_removes_its_lag() -> None:
    """A revoked partition's lag series disappears; others stay; unknown ones are ignored."""
    m, reg = make_metrics()
    m.set_lag("predictions", 0, 10)
    m.set_lag("predictions", 1, 20)
    m.forget_partition("predictions", 0)
    m.forget_partition("predictions", 9)
    assert value(reg, "fusion_consumer_lag", topic="predictions", partition="0") is None
    assert value(reg, "fusion_consumer_lag", topic="predictions", partition="1") == 20


def test_commit_counts_by_outcome() -> None:
    """commit(ok) counts ok or failed."""
    m, reg = make_metrics()
    m.commit(ok=True)
    m.commit(ok=True)
    m.commit(ok=False)
    assert value(reg, "fusion_commits_total", outcome="ok") == 2
    assert value(reg, "fusion_commits_total", outcome="failed") == 1


def test_transaction_rejects_an_unknown_outcome() -> None:
    """transaction() accepts committed/aborted/fenced and names anything else."""
    m, reg = make_metrics()
    m.transaction("fenced")
    assert value(reg, "fusion_transactions_total", outcome="fenced") == 1
    with pytest.raises(ValueError, match="'lost'"):
        m.transaction("lost")


def test_batch_rebalance_output_and_paused() -> None:
    """The one-call helpers move their metric: batch size, rebalances, outputs, paused."""
    m, reg = make_metrics()
    m.batch(250)
    m.rebalance()
    m.output("fused", 4)
    m.set_paused(True)
    assert value(reg, "fusion_batch_size_count") == 1
    assert value(reg, "fusion_batch_size_sum") == 250
    assert value(reg, "fusion_rebalances_total") == 1
    assert value(reg, "fusion_output_records_total", topic="fused") == 4
    assert value(reg, "fusion_fetch_paused") == 1
