"""The live quality metrics: window gauges per model and fused from a QualityWindows
snapshot, the current weights, feedback counters by outcome; on a fresh registry."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from worker.fusion.feedback import OUTCOMES
from worker.fusion.quality import Quality, QualityWindows
from worker.metrics import Metrics

MODELS = ("bert", "roberta")


def make(accuracy_floor: float = 0.0) -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry, models=MODELS, process_metrics=False, accuracy_floor=accuracy_floor)
    return metrics, registry


def test_window_gauges_follow_a_quality_snapshot() -> None:
    """Two labelled requests: bert right on both, roberta wrong on the one it reported
    in, the fused output right on both; the gauges hold the windows' values."""
    m, reg = make()
    windows = QualityWindows(MODELS, window=10)
    windows.observe(
        np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([True, True]), np.array([0.6, 0.4]), 0
    )
    windows.observe(
        np.array([[0.3, 0.7], [0.0, 0.0]]), np.array([True, False]), np.array([0.3, 0.7]), 1
    )
    m.observe_quality(windows.snapshot())

    def get(name: str, model: str) -> float | None:
        return reg.get_sample_value(name, {"model": model})

    assert get("fusion_quality_accuracy", "bert") == 1.0
    assert get("fusion_quality_accuracy", "roberta") == 0.0
    assert get("fusion_quality_accuracy", "fused") == 1.0
    assert get("fusion_quality_window_requests", "roberta") == 1
    assert get("fusion_quality_window_requests", "fused") == 2
    expected = -(np.log(0.9) + np.log(0.7)) / 2
    assert get("fusion_quality_log_loss", "bert") == pytest.approx(expected)
    assert get("fusion_quality_mae", "bert") is None


def test_no_accuracy_series_before_the_first_label() -> None:
    """An empty window exports its count 0 but no accuracy, which would read as 0 and
    fire the accuracy alert."""
    m, reg = make()
    m.observe_quality(QualityWindows(MODELS, window=5).snapshot())
    assert reg.get_sample_value("fusion_quality_window_requests", {"model": "bert"}) == 0
    assert reg.get_sample_value("fusion_quality_accuracy", {"model": "bert"}) is None


def test_regression_windows_export_mae_only() -> None:
    """Scores: MAE per model and fused, no accuracy or log loss."""
    m, reg = make()
    windows = QualityWindows(MODELS, window=5, regression=True)
    windows.observe_score(np.array([1.0, 4.0]), np.array([True, True]), 2.0, 2.0)
    m.observe_quality(windows.snapshot())
    assert reg.get_sample_value("fusion_quality_mae", {"model": "roberta"}) == 2.0
    assert reg.get_sample_value("fusion_quality_mae", {"model": "fused"}) == 0.0
    assert reg.get_sample_value("fusion_quality_accuracy", {"model": "fused"}) is None


def test_unknown_names_in_a_snapshot_are_ignored() -> None:
    """Label values stay bounded: a name outside the models and fused adds no series."""
    m, reg = make()
    m.observe_quality({"intruder": Quality(3, accuracy=0.5, log_loss=1.0)})
    assert reg.get_sample_value("fusion_quality_accuracy", {"model": "intruder"}) is None


def test_weights_are_exported_normalised() -> None:
    """The current weights, summing to 1 over the models."""
    m, reg = make()
    m.set_weights([3.0, 1.0])
    assert reg.get_sample_value("fusion_model_weight", {"model": "bert"}) == 0.75
    assert reg.get_sample_value("fusion_model_weight", {"model": "roberta"}) == 0.25
    with pytest.raises(ValueError, match="1 weights for 2 models"):
        m.set_weights([1.0])


def test_feedback_is_counted_by_outcome_from_zero() -> None:
    """Every outcome exists at 0 from the start; counts add up; others are refused."""
    m, reg = make()
    for outcome in OUTCOMES:
        assert reg.get_sample_value("fusion_feedback_total", {"outcome": outcome}) == 0
    m.count_feedback("joined", 3)
    m.count_feedback("expired")
    assert reg.get_sample_value("fusion_feedback_total", {"outcome": "joined"}) == 3
    assert reg.get_sample_value("fusion_feedback_total", {"outcome": "expired"}) == 1
    with pytest.raises(ValueError, match="feedback outcome 'late'"):
        m.count_feedback("late")


def test_the_accuracy_floor_is_exported() -> None:
    """The configured floor is a gauge, so the alert compares against the value the
    worker was started with."""
    _, reg = make(accuracy_floor=0.8)
    assert reg.get_sample_value("fusion_quality_accuracy_floor") == 0.8
