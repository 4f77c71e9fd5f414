"""Early decision: is a pending request's fused label already final, whatever its missing
members send (or whether they send at all)?

For weighted_average / soft_vote (the weighted sum of probabilities, then argmax) and
hard_vote (the weighted count of labels, then argmax), with the weights of the members
present S_c per label c and the leader L = argmax S (lowest index on ties, as the
fusion): a missing member j adds at most its weight w_j to any one rival r, and nothing
less than 0 to L. So the worst completion for L against r is "every missing member puts
everything on r", which gives r the upper score U_r = S_r + sum of the missing weights.
(The decoder accepts probabilities that sum to 1 within ``[fusion] prob_tolerance``
without renormalising them, so "everything" is ``max_prob`` = 1 + that tolerance.)
L is final when it beats every rival's U_r under the fusion's own tie rule:

    r > L (L wins a tie):  S_L >= U_r
    r < L (r wins a tie):  S_L >  U_r

Exact in floating point, not only on paper: S and U are summed in member order exactly
as worker.fusion.strategies sums them, with the missing members' terms (w_j * max_prob,
or 0) in their places, and floating-point addition and multiplication are monotone, so
any real completion's sums lie between S_L and U_r. soft_vote / weighted_average then
divide by the weight present, which can round two different sums to one quotient (a tie
that r < L would win); so there a strict win needs S_L > U_r by more than that rounding
(a relative 8 ulp). Partial completions (a member that never comes) add 0: covered.
Weights are scaled by a power of two as the Fuser scales them (exact: no decision moves).

Pure numpy over a batch; the join calls it, through ``EarlyDecider``, when an event
arrives for a pending request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from worker.errors import ConfigError
from worker.events import PredictionEvent, unpack_probs
from worker.fusion.batch import BoolArray, FloatArray, IntArray
from worker.fusion.calibration import LOG_FLOOR

if TYPE_CHECKING:
    from worker.fusion.fuser import Fuser

EARLY_STRATEGIES = ("weighted_average", "soft_vote", "hard_vote")
_DIVISION_SLACK = 1.0 + 8 * float(np.finfo(np.float64).eps)
# Below this a sum divided by the weight present (at most m) could underflow to 0.
_SMALLEST_SCORE = 1e-300
# See EarlyDecider.__init__: the relative margin of decisions on calibrated members.
_CALIBRATION_MARGIN = 1e-9
# EarlyDecider skips decide_one while the weight present is below the weight missing
# times this (a relative 1e-9, far above the rounding of a sum of a few weights).
_SHORTCUT_MARGIN = 1.0 - 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    """decided : ndarray of shape (n,), bool: the fused label cannot change any more
    labels : ndarray of shape (n,): that label's index where decided, else -1"""

    decided: BoolArray
    labels: IntArray


def _scaled(weights: FloatArray) -> FloatArray:
    # As Fuser._power_of_two_scaled: the sums are then bit for bit the Fuser's.
    _, exponent = math.frexp(float(weights.max()))
    scaled: FloatArray = weights * 2.0**-exponent
    return scaled


def _check(strategy: str) -> None:
    if strategy not in EARLY_STRATEGIES:
        raise ConfigError(
            "fusion.strategy",
            strategy,
            f"early decision needs one of {', '.join(EARLY_STRATEGIES)}",
        )


def decide(
    strategy: str,
    probs: FloatArray,
    present: BoolArray,
    weights: FloatArray,
    min_models: int = 1,
    max_prob: float = 1.0,
) -> Decision:
    """Which requests' labels are final.

    probs : ndarray of shape (n, m, k), the members' probabilities (one-hot for a label),
        zeros where missing; for hard_vote only their argmax counts
    present : ndarray of shape (n, m), bool
    weights : ndarray of shape (m,), the weights the Fuser uses, >= 0
    min_models : a request with fewer members present is never decided
    max_prob : the largest probability a member may send: 1 + ``[fusion] prob_tolerance``,
        since the decoder accepts sums within the tolerance without renormalising

    A request with no member missing is decided too (its label is the complete one).
    """
    if strategy not in EARLY_STRATEGIES:
        raise ConfigError(
            "fusion.strategy",
            strategy,
            f"early decision needs one of {', '.join(EARLY_STRATEGIES)}",
        )
    n, m, k = probs.shape
    w = _scaled(np.asarray(weights, dtype=np.float64))
    if strategy == "hard_vote":
        values: FloatArray = (probs.argmax(axis=2)[:, :, None] == np.arange(k)).astype(np.float64)
    else:
        values = probs
    raw = np.where(present, w, 0.0)
    # The most a missing member can add to one label, as the strategy would multiply it.
    reach = w * max_prob if strategy != "hard_vote" else w
    # Member order, one term at a time, as strategies._weighted_sum and hard_vote do.
    low = np.zeros((n, k))
    high = np.zeros((n, k))
    for j in range(m):
        term = raw[:, j, None] * values[:, j]
        low += term
        high += np.where(present[:, j, None], term, reach[j])
    leader = low.argmax(axis=1)
    rows = np.arange(n)
    lead = low[rows, leader][:, None]
    label_index = np.arange(k)[None, :]
    after = label_index > leader[:, None]
    before = label_index < leader[:, None]
    if strategy == "hard_vote":
        beats_before = lead > high
    else:
        beats_before = (lead > high * _DIVISION_SLACK) & (lead >= _SMALLEST_SCORE)
    safe = np.where(after, lead >= high, np.where(before, beats_before, True)).all(axis=1)
    enough = (present.sum(axis=1) >= min_models) & (raw.sum(axis=1) > 0)
    decided = safe & enough
    labels: IntArray = np.where(decided, leader, -1).astype(np.int64)
    return Decision(decided, labels)


def decide_one(
    strategy: str,
    probs: Sequence[Sequence[float] | None],
    weights: Sequence[float],
    min_models: int = 1,
    max_prob: float = 1.0,
    slack: float = 1.0,
) -> int | None:
    """``decide`` for one request, in plain Python for the join's per-event path (a
    numpy call per event costs about 110 us; this about 12 us for 3 members and 3
    labels). ``probs`` holds each configured member's probabilities in label order
    (one-hot for a label), or None where it is missing. Returns the final label's
    index, or None while the missing members could still change it. Python floats are
    IEEE doubles, so the same operations in the same order give the same bits as
    ``decide``; a test holds them to it.

    ``slack`` >= 1: the leader must beat every rival's upper score times it, for
    probabilities known only to a relative ``slack - 1`` of the ones the fusion will use
    (calibrated in plain Python rather than by numpy: ``EarlyDecider``)."""
    _check(strategy)
    k = next((len(p) for p in probs if p is not None), 0)
    if k == 0:
        return None
    _, exponent = math.frexp(max(weights))
    scale = 2.0**-exponent
    hard = strategy == "hard_vote"
    most = 1.0 if hard else max_prob
    low = [0.0] * k
    high = [0.0] * k
    count = 0
    weight_present = 0.0
    for p, weight in zip(probs, weights, strict=True):
        wj = weight * scale
        if p is None:
            reach = wj * most
            for c in range(k):
                high[c] += reach
            continue
        count += 1
        weight_present += wj
        vote = max(range(k), key=p.__getitem__) if hard else -1
        for c in range(k):
            term = wj * ((1.0 if c == vote else 0.0) if hard else p[c])
            low[c] += term
            high[c] += term
    if count < min_models or weight_present <= 0:
        return None
    lead = max(low)
    leader = low.index(lead)
    for c in range(k):
        bound = high[c] * slack
        if c > leader:
            safe = lead >= bound
        elif c < leader:
            safe = (
                lead > bound
                if hard
                else (lead > bound * _DIVISION_SLACK and lead >= _SMALLEST_SCORE)
            )
        else:
            continue
        if not safe:
            return None
    return leader


class EarlyDecider:
    """What the join asks after each event it accepts for a request that is still
    incomplete: is the request's fused label already final? Built from the Fuser that
    will fuse the request (``from_fuser``), so it sees the members exactly as the fusion
    does: the same weights (read from the Fuser on every call, so learned or adaptive
    weights are followed) and the same calibration, applied by the same function. The
    join stays ignorant of weights and calibration: it passes its events.

    Exact only if the Fuser's weights do not change between the decision and the fusion
    of that request: change them (``Fuser.set_weights``) between steps, after the
    requests the join closed were fused.
    """

    def __init__(
        self,
        fuser: Fuser,
        min_models: int,
        max_prob: float,
    ) -> None:
        _check(fuser.strategy)
        self._fuser = fuser
        self._strategy = fuser.strategy
        self._min_models = min_models
        self._max_prob = max_prob
        self._n_labels = len(fuser.labels)
        self._one_hot = [
            [float(i == hot) for i in range(self._n_labels)] for hot in range(self._n_labels)
        ]
        self._weights_seen: FloatArray | None = None
        self._weights: list[float] = []
        # Calibration in plain Python (a numpy call per event costs ~280 us): libm's exp
        # and log may differ from numpy's by a few ulp, which moves a calibrated
        # probability by a relative ~1e-15 * |log p| / T at most; the decision then asks
        # for a lead larger by a relative _CALIBRATION_MARGIN / min(T, 1), some 1e4
        # times that, so it holds for the probabilities the Fuser computes too.
        t = fuser.temperatures
        self._temperatures: list[float] | None = None
        self._slack = 1.0
        if t is not None and bool((t != 1.0).any()):
            self._temperatures = t.tolist()
            self._slack = 1.0 + _CALIBRATION_MARGIN / min(1.0, float(t.min()))

    @classmethod
    def from_fuser(cls, fuser: Fuser, min_models: int, prob_tolerance: float) -> EarlyDecider:
        """The decider for ``fuser``, with ``[join] min_models`` and ``[fusion]
        prob_tolerance`` (a member may send probabilities summing to 1 + that)."""
        return cls(fuser, min_models, 1.0 + prob_tolerance)

    def __call__(self, members: Sequence[PredictionEvent | None]) -> int | None:
        """The final label's index, or None while the missing members could change it.
        ``members``: each configured model's event in configured order, None if missing."""
        weights = self._fuser.weights
        if weights is not self._weights_seen:
            self._weights_seen = weights
            self._weights = weights.tolist()
        # A lead is at most the weight present and must beat the weight missing, so
        # while less weight is present than missing nothing can be decided: most first
        # events stop here, before any row is unpacked. The margin covers the rounding
        # of these sums, so the shortcut never skips a request decide_one would decide.
        present_weight = missing_weight = 0.0
        count = 0
        for ev, w in zip(members, self._weights, strict=True):
            if ev is None:
                missing_weight += w
            else:
                present_weight += w
                count += 1
        if count < self._min_models or present_weight < missing_weight * _SHORTCUT_MARGIN:
            return None
        rows: list[list[float] | None] = []
        for ev in members:
            if ev is None:
                rows.append(None)
            elif ev.probs is not None:
                rows.append(unpack_probs(ev.probs))
            elif ev.label is not None:
                rows.append(self._one_hot[ev.label])
            else:
                return None  # a score: not a classification
        if self._temperatures is not None:
            rows = [
                None if r is None else _calibrate(r, t)
                for r, t in zip(rows, self._temperatures, strict=True)
            ]
            if self._strategy == "hard_vote" and _near_tie(rows, self._slack):
                return None  # the Fuser's vote of that member is not known for sure
        return decide_one(
            self._strategy, rows, self._weights, self._min_models, self._max_prob, self._slack
        )


def _calibrate(p: list[float], t: float) -> list[float]:
    """softmax(log(max(p, LOG_FLOOR)) / t) as worker.fusion.calibration applies it; with
    t = 1 the row itself (as there: a member with T = 1 is left bit for bit alone)."""
    if t == 1.0:
        return p
    z = [math.log(x if x > LOG_FLOOR else LOG_FLOOR) / t for x in p]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def _near_tie(rows: Sequence[Sequence[float] | None], slack: float) -> bool:
    """Whether a row's two largest values are too close for its argmax to be certain."""
    for r in rows:
        if r is not None and len(r) > 1:
            first, second = sorted(r)[-2:][::-1]
            if second * slack >= first:
                return True
    return False
