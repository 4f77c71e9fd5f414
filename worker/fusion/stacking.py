"""Stacking at run time: meta-features in scikit-learn's StackingClassifier layout and a
logistic-regression meta-learner applied with plain numpy (no estimator object, no pickle).

Layout (``stack_method="predict_proba"``): the members' probabilities side by side in
member order; with two labels only each member's probability of the second label
(scikit-learn drops the first, redundant column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.fusion.batch import FloatArray, IntArray


def feature_columns(models: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The meta-feature names, ``"model:label"``, in column order."""
    if len(labels) == 2:
        return [f"{model}:{labels[1]}" for model in models]
    return [f"{model}:{label}" for model in models for label in labels]


def meta_features(probs: FloatArray) -> FloatArray:
    """probs of shape (n, m, k) -> meta-features of shape (n, m) for k == 2, else (n, m * k)."""
    n, m, k = probs.shape
    if k == 2:
        return np.ascontiguousarray(probs[:, :, 1])
    return probs.reshape(n, m * k)


@dataclass(frozen=True, slots=True)
class Stacker:
    """A fitted logistic-regression meta-learner.

    coef : ndarray of shape (1, n_features) for two labels, else (k, n_features)
    intercept : ndarray of shape (1,) or (k,)
    """

    members: tuple[str, ...]
    classes: tuple[str, ...]
    coef: FloatArray
    intercept: FloatArray

    def predict(self, features: FloatArray) -> tuple[FloatArray, IntArray]:
        """(n, k) probabilities and (n,) label indices, as ``LogisticRegression``'s
        ``predict_proba`` and ``predict``: the logistic function for two labels (label 1
        where the decision is > 0), the softmax otherwise (the argmax of the decision)."""
        decision = features @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            positive = _expit(decision[:, 0])
            probs: FloatArray = np.stack([1 - positive, positive], axis=1)
            return probs, (decision[:, 0] > 0).astype(np.int64)
        labels: IntArray = decision.argmax(axis=1)
        decision -= decision.max(axis=1, keepdims=True)
        np.exp(decision, out=decision)
        decision /= decision.sum(axis=1, keepdims=True)
        return decision, labels


def _expit(x: FloatArray) -> FloatArray:
    """The logistic function 1 / (1 + exp(-x)), without overflow for large |x|.

    Not scipy.special.expit: importing scipy.special costs the worker about 0.1 s at
    every start, for this one function."""
    e = np.exp(-np.abs(x))
    out: FloatArray = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out
