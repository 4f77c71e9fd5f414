"""Live quality: sliding windows over the last ``window`` labelled requests, per member
and for the fused output, that the metrics read as gauges.

Classification: accuracy (argmax, lowest index on ties, as the fusion) and log loss
(the probability of the true label, clipped at LOG_FLOOR as scikit-learn's log_loss).
Regression: mean absolute error. A member is scored only on the requests it reported in,
so its window may hold fewer than ``window`` values. Pure numpy, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.errors import ConfigError
from worker.fusion.batch import BoolArray, FloatArray
from worker.fusion.calibration import LOG_FLOOR  # as learn.LOG_FLOOR, without scikit-learn

FUSED = "fused"


@dataclass(frozen=True, slots=True)
class Quality:
    """One predictor's window: ``count`` labelled requests; accuracy and log_loss
    (classification) or mae (regression), None when not applicable or count is 0."""

    count: int
    accuracy: float | None = None
    log_loss: float | None = None
    mae: float | None = None


class QualityWindows:
    """Sliding windows of the last ``window`` labelled requests; ``regression`` selects
    MAE instead of accuracy and log loss."""

    def __init__(self, models: Sequence[str], window: int, regression: bool = False) -> None:
        if window <= 0:
            raise ConfigError("feedback.window", window, "must be > 0")
        if FUSED in models:
            raise ConfigError("models[*].name", FUSED, "is reserved for the fused output")
        self.names = (*models, FUSED)
        self.window = window
        self.regression = regression
        # One row per labelled request, ring-buffered; NaN where a member did not report.
        width = len(self.names)
        self._correct = np.full((window, width), np.nan)
        self._loss = np.full((window, width), np.nan)
        self._next = 0
        self._filled = 0

    def observe(
        self, member_probs: FloatArray, present: BoolArray, fused_probs: FloatArray, y: int
    ) -> None:
        """A labelled classification request: member probs (m, k), present (m,), the fused
        probs (k,), the true label index y."""
        probs = np.vstack([member_probs, fused_probs[None, :]])
        seen = np.append(present, True)
        correct = (probs.argmax(axis=1) == y).astype(np.float64)
        loss = -np.log(np.clip(probs[:, y], LOG_FLOOR, 1.0))
        self._push(np.where(seen, correct, np.nan), np.where(seen, loss, np.nan))

    def observe_score(
        self, member_scores: FloatArray, present: BoolArray, fused_score: float, y: float
    ) -> None:
        """A labelled regression request: member scores (m,), present (m,), the fused
        score and the true score y."""
        error = np.abs(np.append(member_scores, fused_score) - y)
        seen = np.append(present, True)
        self._push(np.full(len(seen), np.nan), np.where(seen, error, np.nan))

    def _push(self, correct: FloatArray, loss: FloatArray) -> None:
        self._correct[self._next] = correct
        self._loss[self._next] = loss
        self._next = (self._next + 1) % self.window
        self._filled = min(self._filled + 1, self.window)

    def snapshot(self) -> dict[str, Quality]:
        """Each member's and the fused output's window, by name (members in configured
        order, then ``fused``)."""
        loss = self._loss[: self._filled]
        correct = self._correct[: self._filled]
        counts = (~np.isnan(loss)).sum(axis=0).tolist()
        out: dict[str, Quality] = {}
        for j, name in enumerate(self.names):
            n = int(counts[j])
            if n == 0:
                out[name] = Quality(0)
                continue
            mean_loss = float(np.nanmean(loss[:, j]))
            if self.regression:
                out[name] = Quality(n, mae=mean_loss)
            else:
                accuracy = float(np.nanmean(correct[:, j]))
                out[name] = Quality(n, accuracy=accuracy, log_loss=mean_loss)
        return out
