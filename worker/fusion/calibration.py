"""Temperature scaling: one temperature per member, fitted on labelled history, applied
to the members' probabilities before every strategy.

A member's calibrated probabilities are ``softmax(log(max(p, LOG_FLOOR)) / T)``: T > 1
softens an overconfident model, T < 1 sharpens a timid one, and the argmax never moves,
so a member's own accuracy is unchanged; what changes is how much it sways the others
in a soft vote. T is fitted per member by minimising its log loss (a bounded scalar
search over log T: deterministic, no random start). Pure numpy / scipy; reading files is
``fit``'s job and the artefact format is ``artefact``'s.

The Fuser imports this module for ``apply_temperatures``; the fitting functions import
scipy's optimiser and scikit-learn's model selection only when called, so that fusing
does not pay for them at start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from worker.errors import FusionError
from worker.fusion.batch import BoolArray, FloatArray, IntArray

if TYPE_CHECKING:
    from worker.fusion.learn import Learned

# The floor of log p: the same as worker.fusion.learn.LOG_FLOOR (scikit-learn's log_loss
# clip); not imported from there, which would load scikit-learn into the Fuser.
LOG_FLOOR = 1e-15

# Wide enough for naive Bayes' near-0/1 outputs (T of about 10) and for a timid model
# (T well below 1); the search runs on log T, where the loss is smooth.
T_MIN = 0.01
T_MAX = 100.0
_XATOL = 1e-6  # on log T: temperatures to about six digits


def _logits(probs: FloatArray) -> FloatArray:
    logits: FloatArray = np.log(np.maximum(probs, LOG_FLOOR))
    return logits


def _softmax(scaled: FloatArray) -> FloatArray:
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    out: FloatArray = np.exp(shifted)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def _nll(logits: FloatArray, y: IntArray, temperature: float) -> float:
    """Mean log loss of softmax(logits / T) against y; logits (n, k)."""
    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return float((log_norm - shifted[np.arange(len(y)), y]).mean())


def fit_temperature(probs: FloatArray, y: IntArray) -> float:
    """The temperature in [T_MIN, T_MAX] that minimises the log loss of one member's
    calibrated probs (n, k) against labels y (n,)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        raise FusionError("calibration needs at least one labelled prediction per member")
    logits = _logits(probs)
    found = minimize_scalar(
        lambda log_t: _nll(logits, y, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": _XATOL},
    )
    best = math.exp(float(found.x))
    # The bounded search never evaluates T = 1 itself; keep 1 (no change) when it is as
    # good, so that a member that is already calibrated is left bit for bit alone.
    return 1.0 if _nll(logits, y, 1.0) <= _nll(logits, y, best) else best


def fit_temperatures(probs: FloatArray, present: BoolArray, y: IntArray) -> FloatArray:
    """One temperature per member, (m,), each fitted on the requests where that member
    reported; probs (n, m, k), present (n, m), y (n,)."""
    return np.array(
        [fit_temperature(probs[present[:, j], j], y[present[:, j]]) for j in range(probs.shape[1])],
        dtype=np.float64,
    )


def apply_temperatures(
    probs: FloatArray,
    present: BoolArray,
    temperatures: FloatArray,
    covered: BoolArray | None = None,
) -> FloatArray:
    """The calibrated probs (n, m, k) of a batch: member j's rows become
    softmax(log p / T_j). Missing members stay all zero; a member with T = 1 is returned
    unchanged (not re-normalised through exp/log), so calibration with every T = 1 is
    exactly no calibration. With ``covered`` (n, m, k, label vocabularies), a label a
    member does not cover stays 0 and the softmax runs over the labels it covers."""
    scaled = [j for j in range(probs.shape[1]) if temperatures[j] != 1.0]
    if not scaled:
        return probs
    out = probs.copy()
    cols = np.array(scaled)
    calibrated = _softmax(_logits(probs[:, cols]) / temperatures[cols][None, :, None])
    if covered is not None:
        # The floor in _logits gives an uncovered label mass; take it back.
        calibrated = np.where(covered[:, cols], calibrated, 0.0)
        total = calibrated.sum(axis=2, keepdims=True)
        np.divide(calibrated, total, out=calibrated, where=total > 0)
    out[:, cols] = np.where(present[:, cols, None], calibrated, 0.0)
    return out


def fit_calibration(
    probs: FloatArray,
    y: IntArray,
    weights: FloatArray,
    models: Sequence[str],
    labels: Sequence[str],
) -> Learned:
    """Temperatures for complete labelled requests probs (n, m, k); the scores of the
    configured-weight soft vote on calibrated members, calibrated out of fold (each fold's
    requests with temperatures fitted on the other folds); members' scores raw and
    calibrated out of fold."""
    from worker.fusion.learn import Learned, folds, member_scores, scores

    present = np.ones(probs.shape[:2], dtype=np.bool_)
    cv = folds(y, labels)
    calibrated = np.zeros_like(probs)
    for train, test in cv.split(probs[:, 0], y):
        t = fit_temperatures(probs[train], present[train], y[train])
        calibrated[test] = apply_temperatures(probs[test], present[test], t)
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    raw_vote = np.einsum("m,nmk->nk", w, probs)
    members = member_scores(probs, y, models)
    members.update(
        {f"{name} (calibrated)": scores(calibrated[:, j], y) for j, name in enumerate(models)}
    )
    members["soft_vote (uncalibrated)"] = scores(raw_vote, y)
    return Learned(
        {"temperatures": fit_temperatures(probs, present, y)},
        scores(np.einsum("m,nmk->nk", w, calibrated), y),
        members,
        {"cv_folds": cv.get_n_splits(), "t_min": T_MIN, "t_max": T_MAX, "log_floor": LOG_FLOOR},
    )
