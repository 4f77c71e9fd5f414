"""Prefit scikit-learn members that return given predictions, for parity tests.

X is a column of row indices; a member's ``predict_proba`` / ``predict`` returns its
fixed predictions for those rows. Wrapped in ``FrozenEstimator``, scikit-learn's
ensembles use them as prefit estimators (``cv="prefit"`` is gone in 1.8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.frozen import FrozenEstimator

Array = np.ndarray[Any, Any]


def _rows_of(table: Array | None, X: Array) -> Array:
    """The rows of ``table`` that X's one feature (a row index) points at."""
    assert table is not None
    out: Array = table[np.asarray(X)[:, 0].astype(int)]
    return out


class FixedClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A classifier whose probabilities for row i are ``table[i]`` (classes 0..k-1)."""

    def __init__(self, table: Array | None = None) -> None:
        self.table = table

    def fit(self, X: Array | None, y: Array | None = None) -> FixedClassifier:
        assert self.table is not None
        self.classes_ = np.arange(self.table.shape[1])
        self.n_features_in_ = 1
        return self

    def predict_proba(self, X: Array) -> Array:
        return _rows_of(self.table, X)

    def predict(self, X: Array) -> Array:
        out: Array = self.classes_[self.predict_proba(X).argmax(axis=1)]
        return out


class FixedRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """A regressor whose prediction for row i is ``table[i]``."""

    def __init__(self, table: Array | None = None) -> None:
        self.table = table

    def fit(self, X: Array | None, y: Array | None = None) -> FixedRegressor:
        self.n_features_in_ = 1
        return self

    def predict(self, X: Array) -> Array:
        return _rows_of(self.table, X)


def frozen_classifiers(probs: Array) -> list[tuple[str, FrozenEstimator]]:
    """One frozen member per column of probs (n, m, k)."""
    return [
        (f"m{j}", FrozenEstimator(FixedClassifier(probs[:, j]).fit(None)))
        for j in range(probs.shape[1])
    ]


def frozen_regressors(scores: Array) -> list[tuple[str, FrozenEstimator]]:
    """One frozen member per column of scores (n, m)."""
    return [
        (f"m{j}", FrozenEstimator(FixedRegressor(scores[:, j]).fit(None)))
        for j in range(scores.shape[1])
    ]


def rows(n: int) -> Array:
    """The X of n requests: their row indices as one feature."""
    return np.arange(n)[:, None]
