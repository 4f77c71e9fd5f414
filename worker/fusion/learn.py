"""Learning from labelled history: a stacking meta-learner (logistic regression, C chosen
by cross-validation) and simplex member weights (minimum log loss of the weighted
average). Pure numpy / scikit-learn / scipy; reading files is ``fit``'s job.

Everything is deterministic: fixed folds (``RANDOM_STATE``), deterministic solvers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict

from worker.errors import FusionError
from worker.fusion.batch import FloatArray, IntArray
from worker.fusion.stacking import meta_features

RANDOM_STATE = 0
MAX_FOLDS = 5
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))
LOG_FLOOR = 1e-15  # as scikit-learn's log_loss clips


@dataclass(frozen=True, slots=True)
class Scores:
    """Accuracy and mean log loss of one predictor on the training requests."""

    accuracy: float
    log_loss: float

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "log_loss": self.log_loss}


@dataclass(frozen=True, slots=True)
class Learned:
    """What a fit produced: the parameters, the cross-validated scores of the fused
    predictor, the members' scores and settings worth recording."""

    parameters: dict[str, FloatArray]
    fused: Scores
    members: dict[str, Scores]
    settings: dict[str, float | int | str] = field(default_factory=dict)


def scores(probs: FloatArray, y: IntArray) -> Scores:
    """Accuracy (argmax) and log loss of probs (n, k) against labels y (n,); rows are
    renormalised first, as scikit-learn's log_loss does."""
    rows = probs / probs.sum(axis=1, keepdims=True)
    true = np.clip(rows[np.arange(len(y)), y], LOG_FLOOR, 1.0)
    return Scores(float((rows.argmax(axis=1) == y).mean()), float(-np.log(true).mean()))


def member_scores(probs: FloatArray, y: IntArray, models: Sequence[str]) -> dict[str, Scores]:
    """Each member's scores; members are not trained here, so every request counts."""
    return {name: scores(probs[:, j], y) for j, name in enumerate(models)}


def folds(y: IntArray, labels: Sequence[str]) -> StratifiedKFold:
    """Stratified folds, as many as the rarest label allows (2 to MAX_FOLDS)."""
    counts = np.bincount(y, minlength=len(labels))
    rarest = int(counts.argmin())
    if counts[rarest] < 2:
        raise FusionError(
            f"label {labels[rarest]!r} has {int(counts[rarest])} complete labelled request(s); "
            "fitting needs at least 2 of every configured label"
        )
    n_splits = min(MAX_FOLDS, int(counts[rarest]))
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=RANDOM_STATE)


def fit_stacker(
    probs: FloatArray, y: IntArray, models: Sequence[str], labels: Sequence[str]
) -> Learned:
    """A logistic-regression meta-learner on StackingClassifier's meta-features of probs
    (n, m, k); C by grid search on log loss; out-of-fold scores with that C.

    C is chosen on the same folds the scores are computed on, so those scores are a
    little optimistic (no nested cross-validation: one hyper-parameter, cheap to trust).
    """
    features = meta_features(probs)
    cv = folds(y, labels)
    search = GridSearchCV(
        LogisticRegression(max_iter=1000, random_state=RANDOM_STATE),
        {"C": list(C_GRID)},
        scoring="neg_log_loss",
        cv=cv,
    )
    search.fit(features, y)
    best_c = float(search.best_params_["C"])
    model = search.best_estimator_
    out_of_fold = cross_val_predict(
        LogisticRegression(C=best_c, max_iter=1000, random_state=RANDOM_STATE),
        features,
        y,
        cv=cv,
        method="predict_proba",
    )
    return Learned(
        {
            "coefficients": np.asarray(model.coef_, dtype=np.float64),
            "intercept": np.asarray(model.intercept_, dtype=np.float64),
        },
        scores(out_of_fold, y),
        member_scores(probs, y, models),
        {"C": best_c, "cv_folds": cv.get_n_splits(), "random_state": RANDOM_STATE},
    )


def _mixture_loss(true: FloatArray, w: FloatArray) -> tuple[float, FloatArray]:
    """Log loss of the weighted average and its gradient in w; ``true`` (n, m) holds each
    member's probability of the true label."""
    mixed = np.maximum(true @ w, LOG_FLOOR)
    grad: FloatArray = -(true / mixed[:, None]).mean(axis=0)
    return float(-np.log(mixed).mean()), grad


def simplex_weights(probs: FloatArray, y: IntArray) -> FloatArray:
    """Weights (m,) >= 0 summing to 1 that minimise the log loss of the weighted average
    of probs (n, m, k): SLSQP on the simplex from equal weights.

    Every single member (a corner of the simplex) is a candidate too, so the result is
    never worse than the best member, even when the optimiser stops short of a corner.
    """
    true = probs[np.arange(len(y)), :, y]
    m = probs.shape[1]
    found = minimize(
        lambda w: _mixture_loss(true, w),
        np.full(m, 1.0 / m),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)}],
    )
    solved = np.clip(found.x, 0.0, None)
    candidates = [solved / solved.sum(), *np.eye(m)]
    losses = [_mixture_loss(true, w)[0] for w in candidates]
    best: FloatArray = candidates[int(np.argmin(losses))]
    return best


def fit_weights(
    probs: FloatArray, y: IntArray, models: Sequence[str], labels: Sequence[str]
) -> Learned:
    """Learned weights on every request; scores from weights learned out of fold."""
    cv = folds(y, labels)
    out_of_fold = np.zeros((len(y), probs.shape[2]))
    for train, test in cv.split(probs[:, 0], y):
        w = simplex_weights(probs[train], y[train])
        out_of_fold[test] = np.einsum("m,nmk->nk", w, probs[test])
    return Learned(
        {"weights": simplex_weights(probs, y)},
        scores(out_of_fold, y),
        member_scores(probs, y, models),
        {"cv_folds": cv.get_n_splits(), "random_state": RANDOM_STATE},
    )
