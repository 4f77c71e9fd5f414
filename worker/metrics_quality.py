"""Live quality metrics: per model and for the fused output, the sliding-window accuracy,
log loss or MAE of the labelled requests (``worker.fusion.quality.QualityWindows``), the
weight each model has now, and the feedback labels by outcome.

A part of ``worker.metrics.Metrics`` (its ``quality`` attribute), on the same registry.
A window gauge exists only while its window holds a labelled request: a series at 0
before the first label would read as "accuracy 0" and fire the accuracy alert.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from worker.fusion.feedback import OUTCOMES
from worker.fusion.quality import FUSED, Quality

__all__ = ["FUSED", "QualityMetrics"]


class QualityMetrics:
    """The quality gauges and feedback counters of one worker.

    ``models``: the configured model names (the ``model`` label takes these and
    ``fused``). ``accuracy_floor``: exported as ``fusion_quality_accuracy_floor``, the
    bound below which the alert FusionModelAccuracyLow fires (0: never).
    """

    def __init__(
        self, registry: CollectorRegistry, models: Sequence[str], accuracy_floor: float = 0.0
    ) -> None:
        self.models = tuple(models)
        self.accuracy = Gauge(
            "fusion_quality_accuracy",
            "Share of the labelled requests in the window whose label was right, per model "
            'and for the fused output (model="fused"); classification.',
            ["model"],
            registry=registry,
        )
        self.log_loss = Gauge(
            "fusion_quality_log_loss",
            "Mean log loss over the labelled requests in the window (probability of the "
            "true label clipped at 1e-15), per model and fused; classification.",
            ["model"],
            registry=registry,
        )
        self.mae = Gauge(
            "fusion_quality_mae",
            "Mean absolute error over the labelled requests in the window, per model and "
            "fused; regression, in the unit of the scores.",
            ["model"],
            registry=registry,
        )
        self.window = Gauge(
            "fusion_quality_window_requests",
            "Labelled requests in the quality window, per model (those it reported in) and fused.",
            ["model"],
            registry=registry,
        )
        self.weight = Gauge(
            "fusion_model_weight",
            "The weight each model has in the fusion now (configured, learned or adaptive), "
            "normalised to sum 1 over the models.",
            ["model"],
            registry=registry,
        )
        self.floor = Gauge(
            "fusion_quality_accuracy_floor",
            "Configured [metrics] accuracy_floor: a model's windowed accuracy below it fires "
            "FusionModelAccuracyLow (0: never).",
            registry=registry,
        )
        self.feedback = Counter(
            "fusion_feedback",
            "Label events by outcome: joined (matched a remembered result), expired (its "
            "result was forgotten before the label came), unknown, duplicate.",
            ["outcome"],
            registry=registry,
        )
        self.floor.set(accuracy_floor)
        for outcome in OUTCOMES:
            self.feedback.labels(outcome)
        for name in (*self.models, FUSED):
            self.window.labels(name).set(0)

    def observe(self, snapshot: Mapping[str, Quality]) -> None:
        """Set the window gauges from ``QualityWindows.snapshot()``. Call after each batch
        of labels (or periodically); names outside the configured models and ``fused``
        are ignored, so the label values stay bounded."""
        known = (*self.models, FUSED)
        for name, q in snapshot.items():
            if name not in known:
                continue
            self.window.labels(name).set(q.count)
            for gauge, value in (
                (self.accuracy, q.accuracy),
                (self.log_loss, q.log_loss),
                (self.mae, q.mae),
            ):
                if value is None:
                    _drop(gauge, name)
                else:
                    gauge.labels(name).set(value)

    def set_weights(self, weights: Sequence[float]) -> None:
        """Set the current weight of each configured model (in configured order),
        normalised to sum 1. Call at start and whenever the weights change."""
        if len(weights) != len(self.models):
            raise ValueError(f"{len(weights)} weights for {len(self.models)} models")
        total = float(sum(weights))
        for name, w in zip(self.models, weights, strict=True):
            self.weight.labels(name).set(w / total if total > 0 else 0.0)

    def count_feedback(self, outcome: str, n: int = 1) -> None:
        """Count ``n`` label events with ``outcome`` (``FeedbackMemory.join``'s)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"feedback outcome {outcome!r}: expected one of {OUTCOMES}")
        self.feedback.labels(outcome).inc(n)


def _drop(gauge: Gauge, name: str) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to drop
        gauge.remove(name)
