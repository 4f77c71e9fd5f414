"""The fusion engine's public entry point: ``Fuser.fuse`` turns a batch of finished
requests into fused results, one JSON-ready dict per request, in input order.

The runtime, ``replay`` and the offline ``fuse`` all call it, so a backtest computes
exactly what production computes. Artefacts (stacker, learned weights) are loaded and
checked once, in ``__init__``.

Decisions:

- Missing members have weight 0 and the others are renormalised. Fewer than
  ``[join] min_models`` members gives status ``insufficient`` (no prediction); so does
  a weighted strategy when every member present has weight 0 (a weight-0 model is a
  shadow: it never decides alone).
- ``median`` and ``trimmed_mean`` are unweighted order statistics (as ``np.median`` and
  ``scipy.stats.trim_mean``): each member present reports weight 1/c.
- ``stacking`` needs every configured member; a request with one missing is fused by
  ``[fusion] fallback`` and its result says so (``"fallback": "<strategy>"``). Its
  members report the (renormalised) configured weights, which also give ``agreement``.
- A ``[fusion] weights_file`` replaces the configured weights for every strategy.
- Member temperatures (calibration) apply to the members' probabilities before every
  strategy; the results show the probabilities the members sent, and each member's
  ``contribution`` is computed from the calibrated ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.config import STRATEGIES, Config
from worker.errors import ConfigError
from worker.events import FinishedRequest
from worker.fusion import strategies as st
from worker.fusion.artefact import load_stacker, load_weights
from worker.fusion.batch import Batch, BoolArray, FloatArray, build_batch
from worker.fusion.calibration import apply_temperatures
from worker.fusion.result import Fused, classification_results, regression_results
from worker.fusion.stacking import Stacker, meta_features

log = logging.getLogger(__name__)

CLASSIFICATION_ONLY = frozenset({"soft_vote", "hard_vote", "geometric_mean", "stacking"})
UNWEIGHTED = frozenset({"median", "trimmed_mean"})


def _power_of_two_scaled(weights: FloatArray) -> FloatArray:
    """``weights`` scaled so that the largest is in [0.5, 1): ratios, and so ties between
    sums of weights, are kept exactly (a power of two), and no sum can overflow."""
    _, exponent = math.frexp(float(weights.max()))
    scaled: FloatArray = weights * 2.0**-exponent
    return scaled


class Fuser:
    """Fuse batches of finished requests with one strategy.

    ``strategy`` overrides ``[fusion] strategy``. ``temperatures`` (m,), > 0, calibrate
    the members (``worker.fusion.artefact.load_calibration``). Raises ConfigError for a
    strategy that does not exist or does not fit the task, ArtefactError for an artefact
    that does not match the configuration.
    """

    def __init__(
        self,
        config: Config,
        strategy: str | None = None,
        temperatures: FloatArray | None = None,
    ) -> None:
        fusion = config.fusion
        name = strategy or fusion.strategy
        if name not in STRATEGIES:
            raise ConfigError("fusion.strategy", name, f"must be one of {', '.join(STRATEGIES)}")
        if fusion.is_regression and name in CLASSIFICATION_ONLY:
            raise ConfigError(
                "fusion.strategy", name, "needs fusion.labels (a classification task)"
            )
        self.strategy = name
        self.models = config.model_names
        self.labels = fusion.labels
        self.min_models = config.join.min_models
        self._n_labels = len(fusion.labels)
        self._floor = fusion.geometric_floor
        self._trim = fusion.trim_proportion
        weights = np.array(config.weights, dtype=np.float64)
        if fusion.weights_file:
            weights = load_weights(fusion.weights_file, self.models, self.labels)
            log.info("learned weights from %s: %s", fusion.weights_file, weights.tolist())
        self.weights = weights
        self._weights = _power_of_two_scaled(weights)
        self.fallback: str | None = None
        self._stacker: Stacker | None = None
        if name == "stacking":
            if not fusion.stacker:
                raise ConfigError("fusion.stacker", fusion.stacker, "required with stacking")
            self._stacker = load_stacker(fusion.stacker, self.models, self.labels)
            self.fallback = fusion.fallback
            log.info("stacker from %s, fallback %s", fusion.stacker, self.fallback)
        self.temperatures: FloatArray | None = None
        if temperatures is not None:
            t = np.asarray(temperatures, dtype=np.float64)
            if fusion.is_regression:
                raise ConfigError(
                    "fusion.calibration_file", t.tolist(), "calibration needs fusion.labels"
                )
            if t.shape != (len(self.models),) or not (np.isfinite(t) & (t > 0)).all():
                raise ConfigError(
                    "fusion.calibration_file",
                    t.tolist(),
                    f"needs {len(self.models)} finite temperatures > 0, one per model",
                )
            self.temperatures = t

    def set_weights(self, weights: FloatArray) -> None:
        """Fuse from now on with ``weights`` (m,), >= 0 with a positive sum (adaptive
        weights move between batches; the results name the weights they used)."""
        self.weights = np.array(weights, dtype=np.float64)
        self._weights = _power_of_two_scaled(self.weights)

    def fuse(self, finished: Sequence[FinishedRequest]) -> list[dict[str, Any]]:
        """One fused result per request of ``finished``, in the same order."""
        if not finished:
            return []
        batch = build_batch(finished, self.models, self._n_labels)
        scored = self.calibrate(batch)
        fused = self.compute(scored)
        if self._n_labels == 0:
            return regression_results(finished, self.models, self.strategy, fused, batch.scores)
        return classification_results(
            finished,
            self.models,
            self.labels,
            self.strategy,
            fused,
            batch.probs,
            batch.member_labels,
            self.fallback,
            scored.probs,
        )

    def calibrate(self, batch: Batch) -> Batch:
        """``batch`` with the members' probabilities calibrated (itself without
        temperatures). Temperature scaling keeps each member's argmax, so hard_vote's
        votes do not change."""
        if self.temperatures is None:
            return batch
        probs = apply_temperatures(batch.probs, batch.present, self.temperatures)
        return Batch(probs, batch.scores, batch.present)

    def compute(self, batch: Batch) -> Fused:
        """The array part of ``fuse``: this Fuser's strategy over a whole batch, whose
        probabilities are already calibrated (``calibrate``)."""
        if self._stacker is not None:
            return self._stack(batch, self._stacker)
        return self._strategy(self.strategy, batch)

    def _strategy(self, name: str, batch: Batch) -> Fused:
        present = batch.present
        count = present.sum(axis=1)
        enough = count >= self.min_models
        if name in UNWEIGHTED:
            weights = present / np.maximum(count, 1)[:, None]
            if self._n_labels == 0:
                if name == "median":
                    score = st.median(batch.scores, present)
                else:
                    score = st.trimmed_mean(batch.scores, present, self._trim)
                return Fused(None, None, score, weights, enough)
            if name == "median":
                pooled = st.median(batch.probs, present)
            else:
                pooled = st.trimmed_mean(batch.probs, present, self._trim)
            probs = st.renormalise(pooled, batch.probs, present)
            return Fused(probs, probs.argmax(axis=1), None, weights, enough)

        raw, total = st.masked_weights(present, self._weights)
        weights = st.normalised(raw, total)
        answered = enough & (total > 0)
        if self._n_labels == 0:
            score = st.weighted_average_scores(batch.scores, weights)
            return Fused(None, None, score, weights, answered)
        if name == "hard_vote":
            counts = st.hard_vote(batch.member_labels, raw, self._n_labels)
            # The label comes from the raw counts: dividing could merge near-ties.
            labels = counts.argmax(axis=1)
            probs = np.zeros_like(counts)
            np.divide(counts, total[:, None], out=probs, where=total[:, None] > 0)
            return Fused(probs, labels, None, weights, answered)
        if name == "geometric_mean":
            probs = st.geometric_mean(batch.probs, weights, self._floor)
        else:  # weighted_average, soft_vote: the same numbers, argmax for the label
            probs = st.weighted_average_probs(batch.probs, raw, total)
        return Fused(probs, probs.argmax(axis=1), None, weights, answered)

    def _stack(self, batch: Batch, stacker: Stacker) -> Fused:
        complete: BoolArray = np.all(batch.present, axis=1)
        rows = np.flatnonzero(complete)
        if len(rows) == batch.n_requests:
            base = None
        else:
            assert self.fallback is not None
            base = self._strategy(self.fallback, batch)
        n, k = batch.n_requests, self._n_labels
        probs = np.zeros((n, k)) if base is None else base.probs
        labels = np.zeros(n, dtype=np.int64) if base is None else base.labels
        answered = complete.copy() if base is None else base.answered
        assert probs is not None
        assert labels is not None
        raw, total = st.masked_weights(batch.present, self._weights)
        weights = st.normalised(raw, total)
        if base is not None:
            # Rows the fallback answered report the weights it used.
            weights = np.where(complete[:, None], weights, base.weights)
        if len(rows):
            stacked, stacked_labels = stacker.predict(meta_features(batch.probs[rows]))
            probs[rows] = stacked
            labels[rows] = stacked_labels
            answered[rows] = True
        return Fused(probs, labels, None, weights, answered, ~complete)
