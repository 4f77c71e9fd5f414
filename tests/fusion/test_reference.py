"""geometric_mean, median and trimmed_mean equal a direct per-request computation
(np.median, scipy.stats.trim_mean, log-linear pooling), with members missing at random."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import trim_mean

from tests.fusion.factories import make_config, probs_requests, score_requests
from worker.fusion import Fuser

Array = np.ndarray[Any, Any]
TOL = 1e-12


@st.composite
def partial_problems(draw: st.DrawFn) -> tuple[Array, Array, list[float]]:
    """probs (n, m, k) on the simplex, with exact zeros and ties likely; a presence mask
    with at least one member per request; m weights."""
    n = draw(st.integers(1, 10))
    m = draw(st.integers(1, 6))
    k = draw(st.integers(2, 4))
    raw = draw(
        arrays(
            np.float64, (n, m, k), elements=st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0, 1)
        )
    )
    raw[raw.sum(axis=2) == 0] = 1.0
    probs = raw / raw.sum(axis=2, keepdims=True)
    present = draw(arrays(np.bool_, (n, m)))
    present[np.arange(n), draw(st.integers(0, m - 1))] = True
    weights = draw(st.lists(st.floats(0.05, 10.0), min_size=m, max_size=m))
    return probs, present, weights


def _renormalise(pooled: Array, members: Array) -> Array:
    basis: Array = pooled if pooled.sum() > 0 else members.mean(axis=0)
    out: Array = basis / basis.sum()
    return out


def _fuse(problem: tuple[Array, Array, list[float]], strategy: str, **fusion: Any) -> list[Any]:
    probs, present, weights = problem
    config = make_config(weights, labels=[f"c{i}" for i in range(probs.shape[2])], **fusion)
    return Fuser(config, strategy).fuse(probs_requests(probs, present, config.model_names))


@given(partial_problems(), st.sampled_from([1e-9, 1e-3, 0.05]))
def test_geometric_mean_is_log_linear_pooling(
    problem: tuple[Array, Array, list[float]], floor: float
) -> None:
    """p ~ exp(sum_j w_j log max(p_j, floor)) over the members present, renormalised."""
    probs, present, weights = problem
    results = _fuse(problem, "geometric_mean", geometric_floor=floor)
    for i, result in enumerate(results):
        here = present[i]
        w = np.array(weights)[here]
        pooled = np.exp(np.average(np.log(np.maximum(probs[i, here], floor)), axis=0, weights=w))
        np.testing.assert_allclose(result["probs"], pooled / pooled.sum(), atol=TOL)
        assert result["label"] == f"c{int(np.argmax(result['probs']))}"


@given(partial_problems())
def test_median_is_the_renormalised_median_of_the_members_present(
    problem: tuple[Array, Array, list[float]],
) -> None:
    """Per label np.median over the members present, renormalised (the mean when every
    median is 0)."""
    probs, present, _ = problem
    for i, result in enumerate(_fuse(problem, "median")):
        members = probs[i, present[i]]
        np.testing.assert_allclose(
            result["probs"], _renormalise(np.median(members, axis=0), members), atol=TOL
        )


@given(partial_problems(), st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.4]))
def test_trimmed_mean_is_scipy_trim_mean_of_the_members_present(
    problem: tuple[Array, Array, list[float]], proportion: float
) -> None:
    """Per label scipy.stats.trim_mean over the members present, renormalised."""
    probs, present, _ = problem
    results = _fuse(problem, "trimmed_mean", trim_proportion=proportion)
    for i, result in enumerate(results):
        members = probs[i, present[i]]
        expected = _renormalise(trim_mean(members, proportion, axis=0), members)
        np.testing.assert_allclose(result["probs"], expected, atol=TOL)


def test_median_of_complete_disagreement_is_the_mean() -> None:
    """Three one-hot votes for three labels make every median 0: the mean (uniform) is
    used instead of dividing by zero."""
    probs = np.eye(3)[None]
    (result,) = _fuse((probs, np.ones((1, 3), dtype=bool), [1.0, 1.0, 1.0]), "median")
    np.testing.assert_allclose(result["probs"], [1 / 3] * 3, atol=TOL)


@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 6)),
        elements=st.floats(-1e300, 1e300),
    ),
    st.data(),
)
def test_score_median_and_trimmed_mean_match_numpy_and_scipy(
    scores: Array, data: st.DataObject
) -> None:
    """On scores, median and trimmed_mean equal np.median and trim_mean over the members
    present, without overflow near the double limit."""
    n, m = scores.shape
    present = data.draw(arrays(np.bool_, (n, m)))
    present[:, 0] = True
    config = make_config([1.0] * m, labels=(), trim_proportion=0.2)
    requests = score_requests(scores, present, config.model_names)
    medians = Fuser(config, "median").fuse(requests)
    trimmed = Fuser(config, "trimmed_mean").fuse(requests)
    for i in range(n):
        here = scores[i, present[i]]
        scale = 1e-12 * (1 + np.abs(here).max())
        expected_median = np.median(here / 2) * 2  # halves: np.median(here) may overflow
        assert abs(medians[i]["score"] - expected_median) <= scale
        assert abs(trimmed[i]["score"] - trim_mean(here / 4, 0.2) * 4) <= scale
