"""The feedback memory joins labels to recently fused requests, bounded in time and in
count, and tells joined, expired, unknown and duplicate apart; the quality windows slide."""

from __future__ import annotations

import numpy as np
import pytest

from worker.errors import ConfigError
from worker.fusion.feedback import (
    DUPLICATE,
    EXPIRED,
    JOINED,
    UNKNOWN,
    FeedbackMemory,
    LabelEvent,
    Remembered,
)
from worker.fusion.quality import QualityWindows

PROBS = np.array([[0.8, 0.2], [0.4, 0.6]])


def _fused(request_id: str, fused_ts: int) -> Remembered:
    present = np.array([True, True])
    return Remembered(request_id, fused_ts, present, PROBS, np.empty(0), np.array([0.6, 0.4]), None)


def test_a_label_joins_its_request_once() -> None:
    """The first label joins and hands back the request; a second one is a duplicate."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    memory.remember(_fused("r1", 100), now_ms=100)
    joined = memory.join(LabelEvent("r1", 600, label=0), now_ms=600)
    assert joined.outcome == JOINED
    assert joined.request is not None
    np.testing.assert_array_equal(joined.request.member_probs, PROBS)
    assert memory.join(LabelEvent("r1", 700, label=0), now_ms=700).outcome == DUPLICATE
    assert len(memory) == 0


def test_a_label_for_a_request_never_fused_is_unknown() -> None:
    """An id the memory never held is unknown, and carries no request."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    joined = memory.join(LabelEvent("nope", 5, label=1), now_ms=5)
    assert (joined.outcome, joined.request) == (UNKNOWN, None)


def test_a_label_later_than_the_memory_is_expired() -> None:
    """A request fused more than memory_ms before the label's time is forgotten: expired."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    memory.remember(_fused("r1", 100), now_ms=100)
    assert memory.join(LabelEvent("r1", 1_100, label=0), now_ms=1_100).outcome == JOINED
    memory.remember(_fused("r2", 200), now_ms=200)
    assert memory.join(LabelEvent("r2", 1_201, label=0), now_ms=1_201).outcome == EXPIRED


def test_the_count_bound_forgets_the_oldest() -> None:
    """Beyond memory_count requests the oldest is forgotten: its label is expired."""
    memory = FeedbackMemory(memory_ms=10_000, memory_count=2)
    for i in range(3):
        memory.remember(_fused(f"r{i}", i), now_ms=i)
    assert len(memory) == 2
    assert memory.join(LabelEvent("r0", 5, label=0), now_ms=5).outcome == EXPIRED
    assert memory.join(LabelEvent("r2", 5, label=0), now_ms=5).outcome == JOINED


def test_forgotten_ids_are_themselves_forgotten_in_time() -> None:
    """Long after a request was forgotten even its id is gone: its label is unknown."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    memory.remember(_fused("r1", 0), now_ms=0)
    memory.expire(now_ms=1_500)
    assert memory.join(LabelEvent("r1", 1_600, label=0), now_ms=1_600).outcome == EXPIRED
    assert memory.join(LabelEvent("r1", 3_000, label=0), now_ms=3_000).outcome == UNKNOWN


def test_a_request_fused_again_replaces_the_earlier_entry() -> None:
    """A repeat (at-least-once) keeps one entry, the latest, and joins once."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    memory.remember(_fused("r1", 0), now_ms=0)
    memory.remember(_fused("r1", 900), now_ms=900)
    assert len(memory) == 1
    assert memory.join(LabelEvent("r1", 1_500, label=0), now_ms=1_500).outcome == JOINED


@pytest.mark.parametrize(
    ("memory_ms", "memory_count", "key"), [(0, 1, "memory_ms"), (1, 0, "memory_count")]
)
def test_bounds_must_be_positive(memory_ms: int, memory_count: int, key: str) -> None:
    """A memory with no room is a configuration error naming the key."""
    with pytest.raises(ConfigError, match=f"feedback.{key}"):
        FeedbackMemory(memory_ms, memory_count)


def test_quality_windows_score_members_and_the_fused_output() -> None:
    """Accuracy and log loss per member over the requests it reported in, and for the
    fused output; a member that did not report is not counted."""
    windows = QualityWindows(("a", "b"), window=10)
    windows.observe(PROBS, np.array([True, True]), np.array([0.6, 0.4]), 0)
    windows.observe(PROBS, np.array([True, False]), np.array([0.8, 0.2]), 1)
    q = windows.snapshot()
    assert q["a"].count == 2
    assert q["a"].accuracy == 0.5
    assert q["a"].log_loss == pytest.approx(-(np.log(0.8) + np.log(0.2)) / 2)
    assert (q["b"].count, q["b"].accuracy) == (1, 0.0)
    assert q["fused"].count == 2
    assert q["fused"].log_loss == pytest.approx(-(np.log(0.6) + np.log(0.2)) / 2)


def test_quality_windows_slide() -> None:
    """Only the last ``window`` labelled requests count."""
    windows = QualityWindows(("a",), window=3)
    for y in (1, 1, 0, 0, 0):
        windows.observe(np.array([[0.9, 0.1]]), np.array([True]), np.array([0.9, 0.1]), y)
    q = windows.snapshot()
    assert (q["a"].count, q["a"].accuracy) == (3, 1.0)


def test_quality_windows_for_scores_give_the_mean_absolute_error() -> None:
    """Regression: MAE per member and fused; no accuracy or log loss."""
    windows = QualityWindows(("a", "b"), window=5, regression=True)
    windows.observe_score(np.array([1.0, 3.0]), np.array([True, True]), 2.0, 2.5)
    q = windows.snapshot()
    assert (q["a"].mae, q["b"].mae, q["fused"].mae) == (1.5, 0.5, 0.5)
    assert q["a"].accuracy is None


def test_an_empty_window_has_no_scores() -> None:
    """Before any label every predictor reports count 0 and no numbers."""
    q = QualityWindows(("a",), window=5).snapshot()
    assert q["a"].count == 0
    assert q["a"].accuracy is None


def test_a_fused_batch_is_remembered_row_by_row() -> None:
    """remember_batch keeps each request's own rows, copied out of the batch arrays."""
    memory = FeedbackMemory(memory_ms=1_000, memory_count=10)
    probs = np.array([PROBS, PROBS[::-1]])
    present = np.array([[True, True], [True, False]])
    fused = np.array([[0.6, 0.4], [0.3, 0.7]])
    memory.remember_batch(
        ["r0", "r1"], [10, 11], present, probs, np.empty((2, 0)), fused, None, now_ms=11
    )
    probs[:] = 0.0  # the memory holds copies
    joined = memory.join(LabelEvent("r1", 20, label=1), now_ms=20)
    assert joined.request is not None
    np.testing.assert_array_equal(joined.request.member_probs, PROBS[::-1])
    assert joined.request.present.tolist() == [True, False]
    assert joined.request.fused_probs is not None
    assert joined.request.fused_probs.tolist() == [0.3, 0.7]
    assert (joined.request.fused_ts, joined.request.fused_score) == (11, None)
    assert len(memory) == 1
