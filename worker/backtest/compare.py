"""Is the winner really better than the best member? A paired bootstrap of the difference
in the ranking metric, on the requests both answered.

Per request the loss is -log p(true label), the log loss summand clipped as
scikit-learn clips it (to [eps, 1 - eps], float64's machine epsilon), or for scores the
squared error. The difference of the two predictors' mean losses (RMSE for scores) is
recomputed on ``resamples`` resamples of those requests drawn with replacement (fixed
seed); its 2.5 % and 97.5 % percentiles form the interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.backtest.evaluate import Row, Samples
from worker.backtest.metrics import FloatArray, normalised

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, slots=True)
class Comparison:
    """``difference`` = winner - member on ``metric`` (negative: the winner is better),
    with its 95 % bootstrap interval and the share of resamples the winner won."""

    metric: str
    requests: int
    resamples: int
    difference: float
    low: float
    high: float
    winner_better: float

    def describe(self, winner: str, member: str) -> str:
        return (
            f"{winner} - {member} {self.metric}: {self.difference:+.4f}, 95% interval "
            f"[{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap, {self.resamples} "
            f"resamples of the {self.requests} requests both answered); {winner} better in "
            f"{self.winner_better:.1%} of them"
        )


def paired_bootstrap(
    winner: Row, member: Row, task: str, resamples: int = 1000, seed: int = 0
) -> Comparison | None:
    """Compare on log loss (scores: RMSE); None when the two share no request or a
    classifier has no probabilities."""
    common = sorted(set(winner.samples.ids) & set(member.samples.ids))
    if not common or resamples < 1:
        return None
    a, b = _losses(winner.samples, common, task), _losses(member.samples, common, task)
    if a is None or b is None:
        return None
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(common), size=(resamples, len(common)))
    if task == "classification":
        metric = "log_loss"
        observed = float(a.mean() - b.mean())
        diffs = a[index].mean(axis=1) - b[index].mean(axis=1)
    else:
        metric = "rmse"
        observed = float(np.sqrt(a.mean()) - np.sqrt(b.mean()))
        diffs = np.sqrt(a[index].mean(axis=1)) - np.sqrt(b[index].mean(axis=1))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return Comparison(
        metric,
        len(common),
        resamples,
        observed,
        float(low),
        float(high),
        float(np.mean(diffs < 0)),
    )


def _losses(s: Samples, ids: list[str], task: str) -> FloatArray | None:
    """Per-request loss of ``s`` on ``ids``: -log p(true) or the squared error."""
    position = {rid: i for i, rid in enumerate(s.ids)}
    rows = np.array([position[rid] for rid in ids], dtype=np.int64)
    if task == "classification":
        if s.probs is None:
            return None
        p = normalised(s.probs[rows])
        true = np.clip(p[np.arange(len(rows)), s.y_true[rows].astype(np.int64)], EPS, 1 - EPS)
        out: FloatArray = -np.log(true)
        return out
    err: FloatArray = (s.y_pred[rows].astype(np.float64) - s.y_true[rows].astype(np.float64)) ** 2
    return err
