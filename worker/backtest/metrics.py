"""The backtest's numbers: classification and regression metrics over arrays, the
reliability bins behind the expected calibration error, and the members' agreement.

Pure numpy and scikit-learn; the definitions are the ones docs/backtest.md states.
Every function takes arrays already restricted to the requests that have a prediction
(insufficient results have none and are only counted in the coverage).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    root_mean_squared_error,
)

ECE_BINS = 15
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "log_loss", "brier", "ece")
REGRESSION_METRICS = ("mae", "rmse")
# Lower is better for these; higher for the others.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "mae", "rmse"})

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def classification_metrics(
    y_true: IntArray, y_pred: IntArray, probs: FloatArray | None, n_labels: int
) -> dict[str, float]:
    """Accuracy, macro-F1, log loss, Brier score and ECE of one predictor.

    ``y_true`` and ``y_pred``: label indices, shape (n_samples,); ``probs``: ndarray of
    shape (n_samples, n_labels) in the configured label order, or None for a predictor
    that only gives hard labels (then the probabilistic metrics are NaN). With no
    sample every metric is NaN.
    """
    nan = float("nan")
    if len(y_true) == 0:
        return dict.fromkeys(CLASSIFICATION_METRICS, nan)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Macro over the labels present in y_true or y_pred (scikit-learn's default);
        # a label never predicted and never true would otherwise add a meaningless 0.
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0.0)),
    }
    if probs is None:
        out.update(log_loss=nan, brier=nan, ece=nan)
        return out
    p = normalised(probs)
    labels = list(range(n_labels))
    out["log_loss"] = float(log_loss(y_true, p, labels=labels))
    out["brier"] = brier_score(y_true, p, n_labels)
    out["ece"] = expected_calibration_error(y_true, p)
    return out


def normalised(probs: FloatArray) -> FloatArray:
    """Rows scaled to sum to 1: events are accepted within ``prob_tolerance`` of 1, and
    scikit-learn's log_loss rejects rows that are not normalised to float precision."""
    p = np.asarray(probs, dtype=np.float64)
    out: FloatArray = p / p.sum(axis=1, keepdims=True)
    return out


def brier_score(y_true: IntArray, probs: FloatArray, n_labels: int) -> float:
    """Multi-class Brier score: the mean over samples of sum_k (p_k - y_k)^2, with y the
    one-hot truth. Ranges 0 (perfect) to 2; not halved, also for two labels."""
    return float(brier_score_loss(y_true, probs, labels=list(range(n_labels)), scale_by_half=False))


def reliability_bins(
    y_true: IntArray, probs: FloatArray, bins: int = ECE_BINS
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Confidence (max probability) cut into ``bins`` equal-width bins over [0, 1];
    a bin holds confidences in (lo, hi], the first one also 0.

    Returns (mean confidence, accuracy, count), each of shape (bins,); empty bins
    have NaN mean confidence and accuracy.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    # ceil(c * bins) - 1 puts c in (i/bins, (i+1)/bins] into bin i.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    return mean_conf, accuracy, count


def expected_calibration_error(y_true: IntArray, probs: FloatArray, bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (n_bin / n) * |accuracy_bin - mean confidence_bin|, with the
    bins of ``reliability_bins`` (15 equal-width bins on the max probability) and
    accuracy measured against the argmax of ``probs``."""
    mean_conf, accuracy, count = reliability_bins(y_true, probs, bins)
    used = count > 0
    if not used.any():
        return float("nan")
    gaps = np.abs(accuracy[used] - mean_conf[used])
    return float(np.sum(count[used] / count.sum() * gaps))


def regression_metrics(y_true: FloatArray, y_pred: FloatArray) -> dict[str, float]:
    """Mean absolute error and root mean squared error (NaN with no sample)."""
    if len(y_true) == 0:
        return dict.fromkeys(REGRESSION_METRICS, float("nan"))
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
    }


def agreement_matrix(labels: IntArray) -> FloatArray:
    """Share of requests on which two members predicted the same label, among the
    requests both reported. ``labels``: shape (n_requests, n_models), -1 where a
    member is missing. Returns shape (n_models, n_models); NaN where two members never
    reported together."""
    m = labels.shape[1]
    out = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            both = (labels[:, i] >= 0) & (labels[:, j] >= 0)
            if both.any():
                out[i, j] = float(np.mean(labels[both, i] == labels[both, j]))
    return out


def agreement_scores(scores: FloatArray) -> FloatArray:
    """The regression counterpart of ``agreement_matrix``: Pearson correlation of two
    members' scores over the requests both reported (``scores`` NaN where missing)."""
    m = scores.shape[1]
    out = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(m):
            both = ~np.isnan(scores[:, i]) & ~np.isnan(scores[:, j])
            a, b = scores[both, i], scores[both, j]
            if len(a) > 1 and a.std() > 0 and b.std() > 0:
                out[i, j] = float(np.corrcoef(a, b)[0, 1])
    return out


def better(metric: str, a: float, b: float) -> bool:
    """True when ``a`` is strictly better than ``b`` on ``metric`` (NaN never is)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b if metric in LOWER_IS_BETTER else a > b
