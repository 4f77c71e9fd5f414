"""Early decision is exact: whenever it decides, the label equals the one the Fuser gives
for every completion the missing members could send (one-hot on each label, random
distributions, some of them never coming), ties included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.fusion.factories import make_config
from worker.errors import ConfigError
from worker.fusion import Batch, Fuser
from worker.fusion.early import EARLY_STRATEGIES, decide, decide_one

Array = np.ndarray[Any, Any]
Problem = tuple[Array, Array, Array, int]


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """probs (n, m, k) on the simplex with exact ties, zeros and one-hot rows likely; a
    presence mask; m weights (zeros and equal weights likely, never all zero); a seed for
    the random completions."""
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 5))
    k = draw(st.integers(2, 4))
    raw = draw(
        arrays(
            np.float64,
            (n, m, k),
            elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1),
        )
    )
    raw[raw.sum(axis=2) == 0] = 1.0
    probs = raw / raw.sum(axis=2, keepdims=True)
    present = draw(arrays(np.bool_, (n, m)))
    weights = np.array(
        draw(
            st.lists(
                st.sampled_from([0.0, 1.0, 2.0, 3.0]) | st.floats(0.01, 10.0),
                min_size=m,
                max_size=m,
            )
        )
    )
    if weights.sum() == 0:
        weights[0] = 1.0
    probs[~present] = 0.0
    return probs, present, weights, draw(st.integers(0, 2**32 - 1))


def _one(
    strategy: str,
    probs: Array,
    present: Array,
    weights: Array,
    min_models: int = 1,
    max_prob: float = 1.0,
) -> int | None:
    """decide_one on a request given as arrays: probs (m, k), present (m,)."""
    rows = [probs[j].tolist() if present[j] else None for j in range(len(present))]
    return decide_one(strategy, rows, weights.tolist(), min_models, max_prob)


def _completions(probs: Array, present: Array, k: int, rng: np.random.Generator) -> Batch:
    """Every completion of one request (probs (m, k), present (m,)) worth trying: all
    missing one-hot on each label; each missing member alone one-hot on each label, the
    others never coming; random distributions; random subsets that never come."""
    m = len(present)
    missing = np.flatnonzero(~present)
    rows: list[tuple[Array, Array]] = []

    def add(values: Array, arrived: Array) -> None:
        p, here = probs.copy(), present.copy()
        p[arrived] = values
        here[arrived] = True
        rows.append((p, here))

    eye = np.eye(k)
    for c in range(k):
        add(np.tile(eye[c], (len(missing), 1)), missing)
        for j in missing:
            add(eye[c][None, :], np.array([j]))
    for _ in range(8):
        values = rng.dirichlet(np.full(k, 0.3), size=len(missing))
        add(values, missing)
        keep = missing[rng.random(len(missing)) < 0.5]
        add(eye[rng.integers(k)][None, :].repeat(len(keep), axis=0), keep)
    stacked = np.array([p for p, _ in rows]).reshape(len(rows), m, k)
    here = np.array([h for _, h in rows]).reshape(len(rows), m)
    return Batch(stacked, np.empty((len(rows), 0)), here)


def _check_exact(strategy: str, problem: Problem, min_models: int = 1) -> int:
    """Assert the decided labels against every completion; return how many decided."""
    probs, present, weights, seed = problem
    k = probs.shape[2]
    decision = decide(strategy, probs, present, weights, min_models)
    config = make_config(weights.tolist(), labels=[f"c{i}" for i in range(k)], min_models=1)
    fuser = Fuser(config, strategy)
    rng = np.random.default_rng(seed)
    for i in np.flatnonzero(decision.decided):
        batch = _completions(probs[i], present[i], k, rng)
        fused = fuser.compute(batch)
        assert fused.answered.all()
        assert fused.labels is not None
        wrong = np.flatnonzero(fused.labels != decision.labels[i])
        assert len(wrong) == 0, (i, batch.probs[wrong[0]], batch.present[wrong[0]])
    assert (decision.labels[~decision.decided] == -1).all()
    return int(decision.decided.sum())


@pytest.mark.parametrize("strategy", EARLY_STRATEGIES)
@settings(max_examples=300)
@given(problem=problems())
def test_a_decided_label_is_the_label_of_every_completion(strategy: str, problem: Problem) -> None:
    """On any inputs, a decided label equals the Fuser's label for each adversarial and
    random completion of the missing members, including partial ones."""
    _check_exact(strategy, problem)


@pytest.mark.parametrize("strategy", EARLY_STRATEGIES)
@given(
    problem=problems(),
    min_models=st.integers(1, 3),
    max_prob=st.sampled_from([1.0, 1.001]) | st.floats(1.0, 1.1),
)
def test_the_per_request_form_agrees_with_the_batch_form(
    strategy: str, problem: Problem, min_models: int, max_prob: float
) -> None:
    """decide_one (plain Python, for the join) gives the batch decide's answer, bit for
    bit the same sums, on every request."""
    probs, present, weights, _ = problem
    batch = decide(strategy, probs, present, weights, min_models, max_prob)
    for i in range(len(probs)):
        one = _one(strategy, probs[i], present[i], weights, min_models, max_prob)
        assert one == (int(batch.labels[i]) if batch.decided[i] else None)


@pytest.mark.parametrize("strategy", EARLY_STRATEGIES)
def test_it_decides_often_on_clear_requests(strategy: str) -> None:
    """Not vacuous: on 300 random requests with one member of three missing and peaked
    members, most are decided, and each decision holds."""
    rng = np.random.default_rng(11)
    n, m, k = 300, 3, 3
    y = rng.integers(k, size=n)
    probs = np.full((n, m, k), 0.05)
    probs[np.arange(n), :, y] = 0.9
    present = np.ones((n, m), dtype=bool)
    present[np.arange(n), rng.integers(m, size=n)] = False
    probs[~present] = 0.0
    decided = _check_exact(strategy, (probs, present, np.array([1.0, 1.0, 0.5]), 3))
    assert decided > 200


def test_hard_vote_tie_goes_to_the_lower_label_as_the_full_fusion() -> None:
    """Four equal votes, three in: A, A, B. The missing vote for B would tie 2-2, which
    the lower index wins: decided A when A comes first, undecided when B does."""
    weights = np.ones(4)
    present = np.array([True, True, True, False])
    a_first = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert _one("hard_vote", a_first, present, weights) == 0
    b_first = a_first[:, ::-1].copy()  # the same votes with the label order reversed
    assert _one("hard_vote", b_first, present, weights) is None


@pytest.mark.parametrize("strategy", ["weighted_average", "soft_vote"])
def test_soft_tie_goes_to_the_lower_label_as_the_full_fusion(strategy: str) -> None:
    """The same tie in a weighted average: 2 + 0 against 1 + 1 for the missing member."""
    weights = np.ones(4)
    present = np.array([True, True, True, False])
    a_first = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert _one(strategy, a_first, present, weights) == 0
    assert _one(strategy, a_first[:, ::-1].copy(), present, weights) is None


def test_a_lead_equal_to_the_missing_weight_is_not_enough_against_a_lower_label() -> None:
    """Leader at index 1 ahead by exactly the missing weight: the lower label could tie
    and win, so no decision; a hair more lead decides."""
    weights = np.array([1.0, 1.0])
    present = np.array([True, False])
    assert _one("soft_vote", np.array([[0.0, 1.0], [0, 0]]), present, weights) is None
    weights = np.array([1.0, 0.999])
    assert _one("soft_vote", np.array([[0.0, 1.0], [0, 0]]), present, weights) == 1


@pytest.mark.parametrize("strategy", ["weighted_average", "soft_vote"])
def test_probabilities_above_one_within_the_tolerance_are_allowed_for(strategy: str) -> None:
    """The decoder accepts [1.0005, 0] (sum within prob_tolerance 1e-3). A lead that such
    a member could overturn is decided only when max_prob does not allow for it."""
    weights = np.array([1.0, 0.9996])
    probs = np.array([[0.0, 1.0], [0.0, 0.0]])
    present = np.array([True, False])
    assert _one(strategy, probs, present, weights) == 1  # assuming p <= 1: wrong here
    completion = Batch(
        np.array([[[0.0, 1.0], [1.0005, 0.0]]]), np.empty((1, 0)), np.ones((1, 2), dtype=bool)
    )
    config = make_config(weights.tolist(), labels=["c0", "c1"])
    fused = Fuser(config, strategy).compute(completion)
    assert fused.labels is not None
    assert fused.labels.tolist() == [0]
    assert _one(strategy, probs, present, weights, max_prob=1.001) is None


def test_complete_requests_are_decided_with_their_label() -> None:
    """Nothing missing: decided, with the complete fusion's label."""
    probs = np.array([[[0.2, 0.8], [0.6, 0.4]]])
    decision = decide("soft_vote", probs, np.ones((1, 2), dtype=bool), np.array([1.0, 1.0]))
    assert decision.decided.tolist() == [True]
    assert decision.labels.tolist() == [1]


def test_fewer_members_than_min_models_are_never_decided() -> None:
    """A dominant member alone is not decided while min_models is not reached."""
    probs = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    present = np.array([True, False, False])
    weights = np.array([10.0, 1.0, 1.0])
    assert _one("soft_vote", probs, present, weights) == 0
    assert _one("soft_vote", probs, present, weights, min_models=2) is None


def test_members_of_weight_zero_alone_are_never_decided() -> None:
    """Only weight-0 members present: the fusion would give no answer, so no decision."""
    probs = np.array([[1.0, 0.0], [0.0, 0.0]])
    present = np.array([True, False])
    assert _one("hard_vote", probs, present, np.array([0.0, 1.0])) is None


def test_other_strategies_are_refused() -> None:
    """geometric_mean has no bound of this kind: refused with the key named."""
    with pytest.raises(ConfigError, match=r"fusion\.strategy"):
        decide("geometric_mean", np.zeros((1, 2, 2)), np.ones((1, 2), bool), np.ones(2))
