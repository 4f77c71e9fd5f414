"""The fusion equals scikit-learn's ensembles (prefit members) on the same inputs, to 1e-12."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.ensemble import StackingClassifier, VotingClassifier, VotingRegressor
from sklearn.linear_model import LogisticRegression

from tests.fusion.factories import finished, make_config, probs_requests, score_requests
from tests.fusion.sk_members import frozen_classifiers, frozen_regressors, rows
from worker.events import PredictionEvent
from worker.fusion import Fuser
from worker.fusion.artefact import stacking_document, write_artefact

Array = np.ndarray[Any, Any]
TOL = 1e-12


@st.composite
def problems(draw: st.DrawFn, min_requests: int = 4) -> tuple[Array, list[float]]:
    """probs (n, m, k) with rows on the simplex, and m weights."""
    n = draw(st.integers(min_requests, 12))
    m = draw(st.integers(1, 4))
    k = draw(st.integers(2, 4))
    raw = draw(arrays(np.float64, (n, m, k), elements=st.floats(0.0, 1.0)))
    raw += 1e-3  # no all-zero row
    probs = raw / raw.sum(axis=2, keepdims=True)
    weights = draw(st.lists(st.floats(0.05, 10.0), min_size=m, max_size=m))
    return probs, weights


def _labels(k: int) -> list[str]:
    # Sorted names: the configured order is scikit-learn's class order.
    return [f"c{i}" for i in range(k)]


def _y(n: int, k: int) -> Array:
    """Targets that contain every class (VotingClassifier's label encoder learns them)."""
    return np.arange(n) % k


def _fuse(probs: Array, weights: list[float], strategy: str, **fusion: Any) -> list[dict[str, Any]]:
    k = probs.shape[2]
    config = make_config(weights, labels=_labels(k), **fusion)
    return Fuser(config, strategy).fuse(probs_requests(probs, None, config.model_names))


def _voting(probs: Array, weights: list[float], voting: str) -> VotingClassifier:
    """VotingClassifier over the frozen members, fitted on targets with every class."""
    n, _, k = probs.shape
    vc = VotingClassifier(frozen_classifiers(probs), voting=voting, weights=weights)
    return vc.fit(rows(n), _y(n, k))


def _assert_same_labels(results: list[dict[str, Any]], estimator: Any) -> None:
    """The results' labels are the estimator's (class i is label ci)."""
    predicted = estimator.predict(rows(len(results)))
    assert [r["label"] for r in results] == [f"c{c}" for c in predicted]


def _assert_same_predictions(results: list[dict[str, Any]], estimator: Any) -> None:
    """The results' probabilities (to TOL) and labels are the estimator's."""
    expected = estimator.predict_proba(rows(len(results)))
    np.testing.assert_allclose([r["probs"] for r in results], expected, atol=TOL)
    _assert_same_labels(results, estimator)


# weighted_average on probabilities is soft voting under another name: both must agree.
@pytest.mark.parametrize("strategy", ["soft_vote", "weighted_average"])
@given(problem=problems())
def test_probability_average_equals_soft_voting_classifier(
    strategy: str, problem: tuple[Array, list[float]]
) -> None:
    """soft_vote and weighted_average probabilities and labels equal
    VotingClassifier(voting="soft", weights)."""
    probs, weights = problem
    _assert_same_predictions(_fuse(probs, weights, strategy), _voting(probs, weights, "soft"))


@st.composite
def votes(draw: st.DrawFn) -> tuple[Array, list[float]]:
    """One-hot probs (hard predictions, many ties) and small integer-ish weights."""
    n = draw(st.integers(4, 12))
    m = draw(st.integers(1, 5))
    k = draw(st.integers(2, 4))
    labels = draw(arrays(np.int64, (n, m), elements=st.integers(0, k - 1)))
    weights = draw(st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]), min_size=m, max_size=m))
    return np.eye(k)[labels], weights


@given(st.one_of(votes(), problems()))
def test_hard_vote_equals_voting_classifier(problem: tuple[Array, list[float]]) -> None:
    """hard_vote labels equal VotingClassifier(voting="hard", weights), ties included."""
    probs, weights = problem
    _assert_same_labels(_fuse(probs, weights, "hard_vote"), _voting(probs, weights, "hard"))


def test_hard_vote_tie_goes_to_the_lowest_configured_label() -> None:
    """A tie in weighted votes goes to the label listed first in fusion.labels (not the
    alphabetically first), as scikit-learn's lowest class index wins."""
    config = make_config((1.0, 1.0), labels=("zebra", "ant"), models=("a", "b"))
    request = finished(
        "r",
        {
            "a": PredictionEvent("r", "a", 1, label=1),
            "b": PredictionEvent("r", "b", 2, label=0),
        },
    )
    (result,) = Fuser(config, "hard_vote").fuse([request])
    assert result["label"] == "zebra"
    assert result["probs"] == [0.5, 0.5]


@given(problems())
def test_hard_vote_shares_are_normalised_weighted_votes(problem: tuple[Array, list[float]]) -> None:
    """hard_vote probs are the weighted vote shares: bincount(member argmax, weights) / sum."""
    probs, weights = problem
    k = probs.shape[2]
    results = _fuse(probs, weights, "hard_vote")
    for i, r in enumerate(results):
        shares = np.bincount(probs[i].argmax(axis=1), weights=weights, minlength=k)
        np.testing.assert_allclose(r["probs"], shares / sum(weights), atol=TOL)


@given(
    arrays(
        np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4)), elements=st.floats(-1e6, 1e6)
    ),
    st.data(),
)
def test_weighted_scores_equal_voting_regressor(scores: Array, data: st.DataObject) -> None:
    """weighted_average on scores equals VotingRegressor(weights)."""
    n, m = scores.shape
    weights = data.draw(st.lists(st.floats(0.05, 10.0), min_size=m, max_size=m))
    vr = VotingRegressor(frozen_regressors(scores), weights=weights).fit(rows(n), np.zeros(n))
    config = make_config(weights, labels=(), strategy="weighted_average")
    results = Fuser(config).fuse(score_requests(scores, None, config.model_names))
    expected = vr.predict(rows(n))
    np.testing.assert_allclose(
        [r["score"] for r in results], expected, rtol=TOL, atol=TOL * (1 + np.abs(expected).max())
    )


@settings(max_examples=40)
@given(problems(min_requests=8), st.floats(0.01, 100.0))
def test_stacking_equals_stacking_classifier(problem: tuple[Array, list[float]], c: float) -> None:
    """stacking equals StackingClassifier(prefit members, LogisticRegression) once its
    fitted final estimator is written as an artefact: probabilities and labels."""
    probs, weights = problem
    n, _, k = probs.shape
    stack = StackingClassifier(
        frozen_classifiers(probs),
        final_estimator=LogisticRegression(C=c),
        stack_method="predict_proba",
        cv=2,
    )
    stack.fit(rows(n), _y(n, k))
    config = make_config(weights, labels=_labels(k))
    final = stack.final_estimator_
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stacker.json"
        write_artefact(
            path,
            stacking_document(config.model_names, _labels(k), final.coef_, final.intercept_, {}),
        )
        config = make_config(weights, labels=_labels(k), strategy="stacking", stacker=str(path))
        results = Fuser(config).fuse(probs_requests(probs, None, config.model_names))
    _assert_same_predictions(results, stack)
    assert all("fallback" not in r for r in results)
