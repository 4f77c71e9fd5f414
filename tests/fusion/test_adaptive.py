"""Adaptive weights: exponentiated-gradient steps on the fused result's loss, a floor,
missing members untouched, a JSON state that round-trips; and on a simulated labelled
stream, they leave a model that degrades and do no harm while nothing changes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.fusion import drift
from worker.errors import ConfigError
from worker.fusion.adaptive import AdaptiveStateError, AdaptiveWeights, apply_floor

Array = np.ndarray[Any, Any]
MODELS = ("a", "b", "c")
ALL = np.ones(3, dtype=bool)


def test_one_step_is_the_exponentiated_gradient_of_the_fused_log_loss() -> None:
    """w_i <- w_i exp(eta p_i[y] / sum_j w_j p_j[y]), renormalised."""
    learner = AdaptiveWeights(MODELS, [0.5, 0.3, 0.2], learning_rate=0.4, floor=0.0)
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    learner.update(probs, ALL, 0)
    w = np.array([0.5, 0.3, 0.2])
    fused = w @ probs[:, 0]
    expected = w * np.exp(0.4 * probs[:, 0] / fused)
    np.testing.assert_allclose(learner.weights, expected / expected.sum(), rtol=1e-12)
    assert learner.updates_ == 1


def test_the_member_that_was_right_gains_weight() -> None:
    """After labels the first member got right and the others wrong, it weighs most."""
    learner = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.1, floor=0.01)
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    for _ in range(20):
        learner.update(probs, ALL, 0)
    w = learner.weights
    assert w[0] > w[2] > w[1]
    assert w.sum() == pytest.approx(1.0)


def test_no_weight_goes_below_the_floor() -> None:
    """A member wrong every time ends at the floor, not at 0; weights still sum to 1."""
    learner = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.5, floor=0.05)
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    for _ in range(500):
        learner.update(probs, ALL, 0)
    w = learner.weights
    assert w[2] == pytest.approx(0.05, abs=1e-12)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


@given(
    arrays(np.float64, 5, elements=st.floats(0, 1e6)),
    st.floats(0, 0.19),
)
def test_apply_floor_keeps_every_weight_above_the_floor(raw: Array, floor: float) -> None:
    """Any non-negative weights with a positive sum become a distribution with every
    weight >= floor, and weights above the floor keep their ratios."""
    if raw.sum() == 0:
        raw[0] = 1.0
    w = apply_floor(raw.copy(), floor)
    assert w.sum() == pytest.approx(1.0, abs=1e-9)
    assert (w >= floor * (1 - 1e-12)).all()
    free = w > floor * (1 + 1e-9)
    if free.sum() >= 2:
        ratios = w[free] / raw[free]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_missing_members_keep_their_weight() -> None:
    """A member missing from the labelled request keeps its weight; the present ones
    share what they had."""
    learner = AdaptiveWeights(MODELS, [0.2, 0.3, 0.5], learning_rate=0.5, floor=0.0)
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.0, 0.0]])
    learner.update(probs, np.array([True, True, False]), 0)
    w = learner.weights
    assert w[2] == pytest.approx(0.5, abs=1e-15)
    assert w[0] + w[1] == pytest.approx(0.5, abs=1e-15)
    assert w[0] > 0.2


def test_a_lone_member_or_a_zero_probability_skips_the_step() -> None:
    """One member present, or every member giving the truth 0: nothing to learn."""
    learner = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.5, floor=0.0)
    learner.update(np.array([[1.0, 0.0], [0, 0], [0, 0]]), np.array([True, False, False]), 0)
    learner.update(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), ALL, 1)
    np.testing.assert_array_equal(learner.weights, np.full(3, 1 / 3))
    assert (learner.updates_, learner.skipped_) == (0, 2)


def test_regression_moves_towards_the_member_nearer_the_truth() -> None:
    """Squared error of the fused score: the member closer to y gains weight."""
    learner = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.1, floor=0.0)
    for _ in range(50):
        learner.update_score(np.array([10.0, 12.0, 20.0]), ALL, 10.0)
    w = learner.weights
    assert w[0] > w[1] > w[2]


def test_regression_steps_do_not_depend_on_the_unit_of_the_scores() -> None:
    """Scores and truth a million times larger give the same weights."""
    small = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.1, floor=0.0)
    large = AdaptiveWeights(MODELS, [1.0, 1.0, 1.0], learning_rate=0.1, floor=0.0)
    rng = np.random.default_rng(2)
    for _ in range(100):
        scores, y = rng.normal(size=3), float(rng.normal())
        small.update_score(scores, ALL, y)
        large.update_score(scores * 1e6, ALL, y * 1e6)
    np.testing.assert_allclose(small.weights, large.weights, rtol=1e-9)


def test_state_round_trips_through_json_exactly() -> None:
    """to_state -> JSON -> from_state gives the same weights bit for bit."""
    learner = AdaptiveWeights(MODELS, [0.2, 0.3, 0.5], learning_rate=0.2, floor=0.01)
    rng = np.random.default_rng(3)
    for _ in range(30):
        probs = rng.dirichlet(np.ones(4), size=3)
        learner.update(probs, ALL, int(rng.integers(4)))
    state = orjson.loads(orjson.dumps(learner.to_state()))
    restored = AdaptiveWeights.from_state(state, MODELS, learning_rate=0.2, floor=0.01)
    assert restored.weights.tolist() == learner.weights.tolist()
    assert restored.updates_ == 30
    assert restored.to_state() == learner.to_state()


def test_state_of_other_members_is_refused() -> None:
    """A snapshot taken with another model list is refused, naming both."""
    state = AdaptiveWeights(MODELS, [1, 1, 1], 0.1, 0.0).to_state()
    with pytest.raises(AdaptiveStateError, match=r"members \['a', 'b', 'c'\] differ"):
        AdaptiveWeights.from_state(state, ("a", "b", "d"), 0.1, 0.0)


@pytest.mark.parametrize("weights", [[1.0, "x", 1.0], [1.0, -1.0, 1.0], [0, 0, 0], [1.0, 1.0]])
def test_state_with_bad_weights_is_refused(weights: list[Any]) -> None:
    """Weights that are not m finite numbers >= 0 with a positive sum are refused."""
    state = {**AdaptiveWeights(MODELS, [1, 1, 1], 0.1, 0.0).to_state(), "weights": weights}
    with pytest.raises(AdaptiveStateError, match="state weights"):
        AdaptiveWeights.from_state(state, MODELS, 0.1, 0.0)


@pytest.mark.parametrize(
    ("learning_rate", "floor", "key"),
    [
        (0.0, 0.0, "feedback.learning_rate"),
        (float("inf"), 0.0, "feedback.learning_rate"),
        (0.1, -0.1, "feedback.weight_floor"),
        (0.1, 0.34, "feedback.weight_floor"),
    ],
)
def test_bad_settings_name_the_key(learning_rate: float, floor: float, key: str) -> None:
    """A learning rate <= 0 or a floor outside [0, 1/m) is a configuration error."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        AdaptiveWeights(MODELS, [1, 1, 1], learning_rate, floor)


@pytest.fixture(scope="module")
def drift_runs() -> tuple[drift.Stream, drift.Run, drift.Run]:
    stream = drift.make_stream()
    return stream, drift.run(stream, adaptive=False), drift.run(stream, adaptive=True)


@pytest.mark.slow
def test_the_simulated_member_really_degrades(
    drift_runs: tuple[drift.Stream, drift.Run, drift.Run],
) -> None:
    """The scenario is what the drift tests claim: gamma from about 90 % to 40 %."""
    stream, _, _ = drift_runs
    assert stream.accuracy_before[2] == pytest.approx(0.9, abs=0.02)
    assert stream.accuracy_after[2] == pytest.approx(0.4, abs=0.02)


@pytest.mark.slow
def test_after_a_drift_the_degraded_member_falls_below_0_15_within_2000_labels(
    drift_runs: tuple[drift.Stream, drift.Run, drift.Run],
) -> None:
    """Within 2,000 labelled requests after the drift gamma's weight is below 0.15, and
    it stays there to the end of the stream."""
    stream, _, learned = drift_runs
    half = len(stream.y) // 2
    reached = drift.labels_until_below(learned, 2, 0.15, half)
    assert reached is not None
    assert reached <= 2_000
    after = [w[2] for w, j in zip(learned.weights, learned.labelled, strict=True) if j >= half]
    assert max(after[reached:]) < 0.15


@pytest.mark.slow
def test_after_a_drift_adaptive_beats_static_weights(
    drift_runs: tuple[drift.Stream, drift.Run, drift.Run],
) -> None:
    """On the second half, adaptive weights are more accurate than equal static ones."""
    stream, static, learned = drift_runs
    half = len(stream.y) // 2
    y = stream.y[half:]
    assert drift.accuracy(learned.fused[half:], y) > drift.accuracy(static.fused[half:], y)


@pytest.mark.slow
def test_on_a_stationary_stream_the_fused_log_loss_is_no_worse() -> None:
    """Nothing changes: the fused log loss with adaptive weights is no worse than with
    static equal weights."""
    stream = drift.make_stream(degraded=None)
    static, learned = drift.run(stream, adaptive=False), drift.run(stream, adaptive=True)
    assert drift.log_loss(learned.fused, stream.y) <= drift.log_loss(static.fused, stream.y)


@pytest.mark.slow
def test_every_label_of_the_simulation_joins(
    drift_runs: tuple[drift.Stream, drift.Run, drift.Run],
) -> None:
    """Labels 0.5-2 s late against a 10 s memory all join; the quality windows see the
    degraded member."""
    stream, _, learned = drift_runs
    assert set(learned.outcomes) == {"joined"}
    assert learned.outcomes["joined"] > len(stream.y) - 50
    quality = learned.quality
    assert quality["gamma"].accuracy == pytest.approx(0.4, abs=0.05)
    assert quality["fused"].accuracy > quality["beta"].accuracy
