"""The backtest's metrics and scoring: the numbers equal scikit-learn's (or the stated
definition) on the same arrays, and insufficient results only count in the coverage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
)

from worker.backtest.compare import paired_bootstrap
from worker.backtest.evaluate import Evaluation, Label, Row, Samples
from worker.backtest.metrics import (
    agreement_matrix,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    regression_metrics,
    reliability_bins,
)
from worker.backtest.run import backtest, pick_winner
from worker.config import Config, build_config, load_config
from worker.demo_dataset import write_demo_dataset
from worker.errors import ConfigError
from worker.fusion import Fuser
from worker.fusion.registry import STRATEGIES
from worker.offline import fuse_records
from worker.replay import Position, TopicRange

cases = st.tuples(st.integers(2, 6), st.integers(1, 80), st.integers(0, 2**32 - 1))


def random_case(k: int, n: int, seed: int) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    y_true = rng.integers(0, k, size=n)
    y_pred = probs.argmax(axis=1)
    return y_true, y_pred, probs


@given(cases)
def test_classification_metrics_equal_scikit_learn(case: tuple[int, int, int]) -> None:
    """Accuracy, macro-F1 and log loss are scikit-learn's on the same arrays."""
    k, n, seed = case
    y_true, y_pred, probs = random_case(k, n, seed)
    got = classification_metrics(y_true, y_pred, probs, k)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0.0), abs=1e-12
    )
    assert got["log_loss"] == pytest.approx(
        log_loss(y_true, probs, labels=list(range(k))), abs=1e-12
    )


@given(cases)
def test_brier_is_the_mean_summed_squared_error_over_labels(case: tuple[int, int, int]) -> None:
    """Brier = mean over samples of sum_k (p_k - y_k)^2 with one-hot y (not halved)."""
    k, n, seed = case
    y_true, _, probs = random_case(k, n, seed)
    onehot = np.eye(k)[y_true]
    expected = float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    assert brier_score(y_true, probs, k) == pytest.approx(expected, abs=1e-12)


def test_two_label_brier_is_twice_scikit_learns_binary_score() -> None:
    """With two labels the score is twice scikit-learn's binary Brier score of the
    positive column (both squared errors are counted)."""
    y_true, _, probs = random_case(2, 50, 3)
    binary = brier_score_loss(y_true, probs[:, 1])
    assert brier_score(y_true, probs, 2) == pytest.approx(2 * binary, abs=1e-12)


def ece_reference(y_true: Any, probs: Any, bins: int = 15) -> float:
    """ECE written out as a loop, bins (lo, hi] and 0 in the first one."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@given(cases)
def test_ece_equals_the_stated_definition(case: tuple[int, int, int]) -> None:
    """ECE over 15 equal-width bins on the max probability equals the loop reference."""
    k, n, seed = case
    y_true, _, probs = random_case(k, n, seed)
    assert expected_calibration_error(y_true, probs) == pytest.approx(
        ece_reference(y_true, probs), abs=1e-12
    )


def test_ece_of_a_calibrated_predictor_is_zero() -> None:
    """Confidence 0.75 right three times out of four: perfectly calibrated, ECE 0."""
    probs = np.array([[0.75, 0.25]] * 4)
    y_true = np.array([0, 0, 0, 1])
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.0, abs=1e-15)


def test_reliability_bin_edges_are_right_closed() -> None:
    """A confidence exactly on an edge (0.6 = 9/15) falls in the lower bin; 1.0 in the last."""
    probs = np.array([[0.6, 0.4], [1.0, 0.0]])
    _, _, count = reliability_bins(np.array([0, 0]), probs)
    assert count[8] == 1
    assert count[14] == 1
    assert count.sum() == 2


def test_hard_label_predictor_has_no_probabilistic_metrics() -> None:
    """Without probabilities log loss, Brier and ECE are n/a (NaN), accuracy is not."""
    got = classification_metrics(np.array([0, 1]), np.array([0, 0]), None, 2)
    assert got["accuracy"] == 0.5
    assert all(math.isnan(got[m]) for m in ("log_loss", "brier", "ece"))


def test_unnormalised_rows_are_rescaled_before_log_loss() -> None:
    """Events within the tolerance of 1 are accepted, so rows summing to 1.0005 score
    like their rescaled selves (scikit-learn would refuse them)."""
    probs = np.array([[0.7005, 0.3], [0.2, 0.8005]])
    y = np.array([0, 1])
    got = classification_metrics(y, y, probs, 2)["log_loss"]
    rescaled = probs / probs.sum(axis=1, keepdims=True)
    assert got == pytest.approx(log_loss(y, rescaled, labels=[0, 1]), abs=1e-12)


@given(st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_regression_metrics_equal_scikit_learn(n: int, seed: int) -> None:
    """MAE and RMSE are scikit-learn's mean_absolute_error and sqrt(mean_squared_error)."""
    rng = np.random.default_rng(seed)
    y, p = rng.normal(size=n), rng.normal(size=n)
    got = regression_metrics(y, p)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, p), abs=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, p)), abs=1e-12)


def test_no_sample_gives_nan_not_an_error() -> None:
    """A predictor that answered nothing scores NaN everywhere (shown as n/a)."""
    empty = np.array([], dtype=np.int64)
    got = classification_metrics(empty, empty, np.zeros((0, 3)), 3)
    assert all(math.isnan(v) for v in got.values())


def test_agreement_counts_only_requests_both_members_reported() -> None:
    """Agreement of two members is over the requests both reported; NaN when never."""
    labels = np.array([[0, 0, -1], [1, 2, -1], [2, 2, -1], [-1, 1, -1]])
    got = agreement_matrix(labels)
    assert got[0, 1] == pytest.approx(2 / 3)
    assert got[1, 1] == 1.0
    assert math.isnan(got[0, 2])


# -- the backtest over fused results ---------------------------------------------------

LABELS = ["neg", "neu", "pos"]
MODELS = ["good", "fair", "poor"]
T0 = 1_700_000_000_000


def make_config(min_models: int = 1, labels: list[str] | None = LABELS, **fusion: Any) -> Config:
    fusion_table: dict[str, Any] = dict(fusion)
    if labels:
        fusion_table["labels"] = labels
    else:
        fusion_table.setdefault("strategy", "weighted_average")
    return build_config(
        {
            "join": {"timeout_ms": 500, "min_models": min_models},
            "fusion": fusion_table,
            "models": [{"name": m} for m in MODELS],
        }
    )


def history(
    n: int, seed: int = 0, drop: float = 0.1
) -> tuple[list[tuple[int, bytes, int | None]], dict[str, Label]]:
    """Events of ``n`` requests one second apart from three members of falling quality
    (each silent with probability ``drop``), and the true labels."""
    rng = np.random.default_rng(seed)
    records: list[tuple[int, bytes, int | None]] = []
    truth: dict[str, Label] = {}
    for i in range(n):
        rid = f"q-{i:04d}"
        y = int(rng.integers(3))
        truth[rid] = LABELS[y]
        for j, m in enumerate(MODELS):
            if rng.random() < drop:
                continue
            probs = rng.dirichlet(np.ones(3) + 3.0 * np.eye(3)[y] / (j + 1))
            event = {
                "request_id": rid,
                "model": m,
                "ts": T0 + 1000 * i + j,
                "probs": probs.tolist(),
            }
            records.append((0, orjson.dumps(event), None))
    return records, truth


def test_member_rows_equal_scikit_learn_on_the_members_events() -> None:
    """A member is scored on the requests it reported, with its own probabilities: the
    row equals scikit-learn's accuracy and log loss computed from the events directly."""
    config = make_config()
    records, truth = history(200)
    outcome = backtest(config, records, truth, ["soft_vote"])
    for m in MODELS:
        events = [orjson.loads(v) for _, v, _ in records if orjson.loads(v)["model"] == m]
        y = [LABELS.index(str(truth[e["request_id"]])) for e in events]
        p = np.array([e["probs"] for e in events])
        row = next(r for r in outcome.evaluation.members if r.name == m)
        assert row.answered == len(events)
        assert row.metrics["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-12)
        assert row.metrics["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), abs=1e-9)


def test_strategy_rows_equal_scikit_learn_on_the_fused_results() -> None:
    """A strategy row is scikit-learn's metrics over the results `fuse` would write."""
    config = make_config()
    records, truth = history(200, seed=1)
    outcome = backtest(config, records, truth, ["soft_vote", "geometric_mean"])
    for name in ("soft_vote", "geometric_mean"):
        results = list(fuse_records(config, records, Fuser(config, strategy=name)))
        y = [LABELS.index(str(truth[r["request_id"]])) for r in results]
        pred = [LABELS.index(r["label"]) for r in results]
        probs = np.array([r["probs"] for r in results])
        row = next(r for r in outcome.evaluation.strategies if r.name == name)
        assert row.metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert row.metrics["macro_f1"] == pytest.approx(
            f1_score(y, pred, average="macro"), abs=1e-12
        )
        rescaled = probs / probs.sum(axis=1, keepdims=True)
        assert row.metrics["log_loss"] == pytest.approx(
            log_loss(y, rescaled, labels=[0, 1, 2]), abs=1e-12
        )


def test_insufficient_results_only_count_in_the_coverage() -> None:
    """With min_models = 2, requests with one member are insufficient: excluded from the
    scored requests (answered) and reported as the insufficient share."""
    config = make_config(min_models=2)
    records, truth = history(300, seed=2, drop=0.4)
    outcome = backtest(config, records, truth, ["soft_vote"])
    results = list(fuse_records(config, records, Fuser(config)))
    insufficient = sum(r["status"] == "insufficient" for r in results)
    assert insufficient > 0
    row = outcome.evaluation.strategies[0]
    assert row.requests == len(results)
    assert row.answered == len(results) - insufficient
    assert row.coverage["insufficient"] == pytest.approx(insufficient / len(results))
    answered = [r for r in results if r["status"] != "insufficient"]
    y = [LABELS.index(str(truth[r["request_id"]])) for r in answered]
    pred = [LABELS.index(r["label"]) for r in answered]
    assert row.metrics["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)


def test_every_strategy_sees_the_same_joined_requests() -> None:
    """One pass: every classification strategy but stacking (it needs an artefact) has a
    row, and every row has the same requests and the same coverage."""
    config = make_config(min_models=2)
    records, truth = history(150, seed=3, drop=0.3)
    strategies = backtest(config, records, truth).evaluation.strategies
    classification = {n for n, s in STRATEGIES.items() if "classification" in s.tasks}
    assert {r.name for r in strategies} == classification - {"stacking"}
    assert len({(r.requests, r.answered, tuple(r.coverage.items())) for r in strategies}) == 1


def test_fit_evaluates_only_the_requests_after_the_cut(tmp_path: Path) -> None:
    """--fit trains on the earlier requests and scores every row on the later ones; the
    stacker's training used no later request; the winner's config lines are printed."""
    config = make_config()
    records, truth = history(400, seed=4)
    outcome = backtest(config, records, truth, fit=True, fit_dir=tmp_path)
    split = outcome.split
    assert split is not None
    assert outcome.evaluation.requests == len(split.test)
    assert all(set(r.samples.ids) <= split.test for r in outcome.evaluation.rows)
    stacker = orjson.loads((tmp_path / "stacker.json").read_bytes())
    complete_train = sum(
        1
        for rid in split.train
        if sum(orjson.loads(v)["request_id"] == rid for _, v, _ in records) == len(MODELS)
    )
    assert stacker["training"]["requests_used"] == complete_train
    names = {r.name for r in outcome.evaluation.strategies}
    assert {"stacking", "soft_vote+learned_weights"} <= names
    assert outcome.winner is not None
    chosen = next(v for v in outcome.variants if v.name == outcome.winner.name)
    assert f'strategy = "{chosen.strategy}"' in outcome.lines


def test_stacking_needs_an_artefact_or_fit() -> None:
    """Asking for stacking without fusion.stacker and without --fit names the problem."""
    records, truth = history(10)
    with pytest.raises(ConfigError, match=r"needs fusion\.stacker or --fit"):
        backtest(make_config(), records, truth, ["stacking"])


def test_unknown_strategy_is_refused_by_name() -> None:
    """A misspelt --strategy is a ConfigError naming it."""
    records, truth = history(10)
    with pytest.raises(ConfigError, match="soft_voet"):
        backtest(make_config(), records, truth, ["soft_voet"])


def row(name: str, log_loss_value: float, accuracy: float) -> Row:
    empty = Samples((), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return Row(
        name, "strategy", 10, 10, {}, {"log_loss": log_loss_value, "accuracy": accuracy}, empty
    )


def test_winner_is_the_lowest_log_loss_ties_by_accuracy() -> None:
    """The winner has the lowest log loss; on a tie the higher accuracy wins."""
    ev = Evaluation(
        "classification",
        tuple(LABELS),
        tuple(MODELS),
        [row("a", 0.30, 0.9), row("b", 0.25, 0.8), row("c", 0.25, 0.85)],
        np.zeros((3, 3)),
        {},
        10,
        0,
        0,
    )
    winner = pick_winner(ev)
    assert winner is not None
    assert winner.name == "c"


def test_regression_rows_equal_scikit_learn() -> None:
    """For a scores config the rows hold MAE and RMSE equal to scikit-learn's."""
    config = make_config(labels=None)
    rng = np.random.default_rng(5)
    records: list[tuple[int, bytes, int | None]] = []
    truth: dict[str, Label] = {}
    for i in range(100):
        rid = f"s-{i}"
        truth[rid] = float(rng.normal())
        for j, m in enumerate(MODELS):
            score = float(truth[rid]) + float(rng.normal(scale=0.2 * (j + 1)))
            event = {"request_id": rid, "model": m, "ts": T0 + 1000 * i, "score": score}
            records.append((0, orjson.dumps(event), None))
    outcome = backtest(config, records, truth, ["weighted_average", "median"])
    results = list(fuse_records(config, records, Fuser(config, strategy="median")))
    y = [float(truth[r["request_id"]]) for r in results]
    pred = [r["score"] for r in results]
    got = next(r for r in outcome.evaluation.strategies if r.name == "median").metrics
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), abs=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)), abs=1e-12)


def test_bootstrap_difference_matches_the_table() -> None:
    """The paired comparison's observed difference is the difference of the two rows'
    log losses when both answered the same requests; a predictor against itself gives
    an interval of exactly zero."""
    config = make_config()
    records, truth = history(200, seed=6, drop=0.0)
    ev = backtest(config, records, truth, ["soft_vote"]).evaluation
    fused, member = ev.strategies[0], ev.members[0]
    got = paired_bootstrap(fused, member, "classification", resamples=200)
    assert got is not None
    expected = fused.metrics["log_loss"] - member.metrics["log_loss"]
    assert got.difference == pytest.approx(expected, abs=1e-9)
    same = paired_bootstrap(member, member, "classification", resamples=50)
    assert same is not None
    assert (same.low, same.high, same.difference) == (0.0, 0.0, 0.0)


def test_topic_range_syntax() -> None:
    """TOPIC@FROM..TO parses topics and positions; a plain path is not a range."""
    rng = TopicRange.parse("a,b@offset:5..2024-05-01T12:00:00Z", "--predictions")
    assert rng is not None
    assert rng.topics == ("a", "b")
    assert rng.start == Position("offset", 5)
    assert rng.end == Position("time", 1_714_564_800_000)
    assert TopicRange.parse("events.jsonl", "--predictions") is None
    with pytest.raises(ConfigError, match=r"TOPIC@FROM\.\.TO"):
        TopicRange.parse("a@earliest", "--predictions")


def test_a_time_without_zone_is_utc() -> None:
    """An ISO timestamp without a zone is read as UTC."""
    assert Position.parse("2024-05-01T12:00:00") == Position.parse("2024-05-01T12:00:00+00:00")


def test_demo_dataset_is_deterministic_and_partial(tmp_path: Path) -> None:
    """The digits dataset writes the same bytes for the same seed, one event per model
    and held-out image minus a few dropped ones, and a config that loads."""
    first = write_demo_dataset(tmp_path / "a")
    second = write_demo_dataset(tmp_path / "b")
    for name, path in first.items():
        assert path.read_bytes() == second[name].read_bytes()
    config = load_config(first["fusion.toml"], env={})
    labels = first["labels.jsonl"].read_bytes().splitlines()
    events = [orjson.loads(line) for line in first["events.jsonl"].read_bytes().splitlines()]
    assert 0 < len(labels) * len(config.models) - len(events) < 0.1 * len(labels) * 3
    assert {e["model"] for e in events} == set(config.model_names)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
