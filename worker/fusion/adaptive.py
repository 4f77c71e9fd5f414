"""Adaptive member weights: exponentiated-gradient steps on the *fused* result's loss,
one step per labelled request, with a learning rate and a floor.

Classification (log loss of the weighted average of the members' probabilities)::

    v = w over the members present, renormalised
    v_i <- v_i * exp(eta * p_i[y] / sum_j v_j p_j[y]),  renormalised

which is the exponentiated-gradient step on -log(sum_j v_j p_j[y]). It moves the
weights towards the mixture that predicts best, not towards the single best member:
Hedge on each member's own loss would drift to one member and lose what the ensemble
gains while nothing changes; this step keeps a mixture when the mixture is better.

Regression (squared error of the fused score s = sum_j v_j s_j)::

    v_i <- v_i * exp(-eta * 2 (s - y)(s_i - s) / ((s - y)^2 + sum_j v_j (s_j - s)^2))

the gradient 2 (s - y) s_i, shifted by a constant (which the renormalisation cancels)
and divided by the request's own error and spread, so that a step does not depend on the
unit of the scores (an unscaled step on scores in the thousands would overflow exp).

Members missing from a request keep their weight: the present members share the weight
they had. After each step every weight is raised to at least ``floor`` (the others
scaled down to make room), so that a member that degraded can come back when it
recovers. The weights sum to 1. Pure numpy; the state is a JSON-ready dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from worker.errors import ConfigError, FusionError
from worker.fusion.batch import BoolArray, FloatArray, IntArray

STATE_KIND = "adaptive_weights"
STATE_VERSION = 1


class AdaptiveStateError(FusionError):
    """A snapshot of adaptive weights does not fit the configuration (other members, bad
    numbers): delete the snapshot to start again from the configured weights."""


def _check_settings(m: int, learning_rate: float, floor: float) -> None:
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ConfigError("feedback.learning_rate", learning_rate, "must be a finite number > 0")
    if not (math.isfinite(floor) and floor >= 0 and floor * m < 1):
        raise ConfigError(
            "feedback.weight_floor",
            floor,
            f"must be >= 0 and below 1/{m} (the share each of the {m} models would have)",
        )


def apply_floor(weights: FloatArray, floor: float) -> FloatArray:
    """``weights`` (m,) renormalised to sum 1 with every weight >= ``floor``: the ones
    below are raised to it and the others scaled down in proportion."""
    w: FloatArray = weights / weights.sum()
    fixed = np.zeros(w.shape, dtype=np.bool_)
    # Scaling the free weights down can push another one below the floor: at most m rounds.
    for _ in range(len(w)):
        low = ~fixed & (w < floor)
        if not low.any():
            break
        fixed |= low
        w[fixed] = floor
        free = w[~fixed].sum()
        w[~fixed] *= (1.0 - floor * fixed.sum()) / free
    return w


class AdaptiveWeights:
    """Member weights that learn from labelled requests (see the module docstring).

    models : the configured model names, in order
    weights : ndarray of shape (m,), the starting weights (the configured ones), > 0 sum
    learning_rate : eta, the step size (> 0)
    floor : the least weight a member keeps (0 <= floor < 1/m)
    """

    def __init__(
        self,
        models: Sequence[str],
        weights: FloatArray | Sequence[float],
        learning_rate: float,
        floor: float,
    ) -> None:
        self.models = tuple(models)
        m = len(self.models)
        _check_settings(m, learning_rate, floor)
        start = np.array(weights, dtype=np.float64)
        if start.shape != (m,) or not np.isfinite(start).all() or (start < 0).any():
            raise ConfigError("models[*].weight", start.tolist(), f"need {m} finite weights >= 0")
        if start.sum() <= 0:
            raise ConfigError("models[*].weight", start.tolist(), "need a positive sum")
        self.learning_rate = float(learning_rate)
        self.floor = float(floor)
        self._w = apply_floor(start, self.floor)
        self.updates_ = 0
        self.skipped_ = 0

    @property
    def weights(self) -> FloatArray:
        """The current weights, (m,), summing to 1 (a copy)."""
        return self._w.copy()

    def update(self, probs: FloatArray, present: BoolArray, y: int) -> None:
        """One step on a labelled classification request: member probs (m, k), present
        (m,), the true label index y."""
        v = np.where(present, self._w, 0.0)
        mass = v.sum()
        if mass <= 0 or present.sum() < 2:
            # One member alone (or none) has nobody to share weight with.
            self.skipped_ += 1
            return
        v /= mass
        true = np.where(present, probs[:, y], 0.0)
        fused = float(v @ true)
        if fused <= 0:
            # Every member gave the truth probability 0: no member did better than another.
            self.skipped_ += 1
            return
        self._step(v, mass, present, self.learning_rate * true / fused)

    def update_score(self, scores: FloatArray, present: BoolArray, y: float) -> None:
        """One step on a labelled regression request: member scores (m,), present (m,),
        the true score y."""
        v = np.where(present, self._w, 0.0)
        mass = v.sum()
        if mass <= 0 or present.sum() < 2:
            self.skipped_ += 1
            return
        v /= mass
        s = np.where(present, scores, 0.0)
        fused = float(v @ s)
        error = fused - y
        spread = s - fused
        scale = error * error + float(v @ (spread * spread))
        if not math.isfinite(scale) or scale <= 0:
            self.skipped_ += 1
            return
        self._step(v, mass, present, -self.learning_rate * 2.0 * error * spread / scale)

    def _step(self, v: FloatArray, mass: float, present: BoolArray, exponent: FloatArray) -> None:
        # Only the members present move; the max is taken off so exp cannot overflow.
        exponent = np.where(present, exponent, -np.inf)
        moved = v * np.exp(exponent - exponent[present].max())
        moved *= mass / moved.sum()
        self._w = apply_floor(np.where(present, moved, self._w), self.floor)
        self.updates_ += 1

    def update_many(self, probs: FloatArray, present: BoolArray, y: IntArray) -> None:
        """``update`` for each labelled request in order: probs (n, m, k), present (n, m),
        y (n,). The steps are sequential: each one starts from the weights the last left."""
        for i in range(len(y)):
            self.update(probs[i], present[i], int(y[i]))

    def to_state(self) -> dict[str, Any]:
        """The JSON-ready state (plain floats, which JSON round-trips exactly)."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "members": list(self.models),
            "weights": self._w.tolist(),
            "learning_rate": self.learning_rate,
            "weight_floor": self.floor,
            "updates": self.updates_,
            "skipped": self.skipped_,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        models: Sequence[str],
        learning_rate: float,
        floor: float,
    ) -> AdaptiveWeights:
        """Weights restored from ``to_state`` for the configured ``models``. The learning
        rate and floor are the configured ones (a changed config wins over the snapshot);
        the floor is applied to the restored weights."""
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise AdaptiveStateError(
                f"state kind {state.get('kind')!r} version {state.get('version')!r} is not "
                f"{STATE_KIND!r} version {STATE_VERSION}"
            )
        if state.get("members") != list(models):
            raise AdaptiveStateError(
                f"state members {state.get('members')!r} differ from the configured models "
                f"{list(models)}"
            )
        raw = state.get("weights")
        ok = isinstance(raw, list) and len(raw) == len(models)
        ok = ok and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in raw  # type: ignore[union-attr]
        )
        if not ok or sum(raw) <= 0:  # type: ignore[arg-type]
            raise AdaptiveStateError(
                f"state weights {raw!r} are not {len(models)} finite numbers >= 0 with a "
                "positive sum"
            )
        weights = np.array(raw, dtype=np.float64)
        restored = cls(models, weights, learning_rate, floor)
        if (weights >= restored.floor).all() and weights.sum() == 1.0:
            # Exactly as snapshotted: renormalising again could move the last bits.
            restored._w = weights
        updates, skipped = state.get("updates", 0), state.get("skipped", 0)
        restored.updates_ = updates if isinstance(updates, int) else 0
        restored.skipped_ = skipped if isinstance(skipped, int) else 0
        return restored
