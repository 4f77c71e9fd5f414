"""The time-ordered split of ``backtest --fit``: earlier requests train, later ones test.

Requests are ordered by their first event time (the smallest ``ts`` of their events).
The train part is the earliest ``train_share`` of them, with the cut moved so that no
first time is on both sides: every train request starts strictly before every test
request, and no request is in both. The caller then trains only on the events of train
requests, so no event of a later request is ever seen by the training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.errors import FusionError

DEFAULT_TRAIN_SHARE = 0.6


@dataclass(frozen=True, slots=True)
class TimeSplit:
    """Request ids on each side of the cut; ``cut_ts`` is the first time of the test side
    (None when it is empty)."""

    train: frozenset[str]
    test: frozenset[str]
    cut_ts: int | None


def time_split(first_ts: Mapping[str, int], train_share: float = DEFAULT_TRAIN_SHARE) -> TimeSplit:
    """Split request ids by first event time, ``train_share`` (in (0, 1)) of them first.

    Requests sharing a first time stay together: the cut moves to the time boundary
    nearest the target (the lower one on a tie). Raises FusionError when no boundary
    exists (fewer than two distinct first times), since one side would be empty.
    """
    if not 0 < train_share < 1:
        raise FusionError(f"train share must be in (0, 1); got {train_share!r}")
    ordered = sorted(first_ts.items(), key=lambda item: (item[1], item[0]))
    n = len(ordered)
    target = int(n * train_share)
    # Cut positions i where ordered[i - 1] starts strictly before ordered[i].
    boundaries = [i for i in range(1, n) if ordered[i - 1][1] < ordered[i][1]]
    if not boundaries:
        raise FusionError(
            f"cannot split {n} requests by time: they need at least two distinct first event times"
        )
    cut = min(boundaries, key=lambda i: (abs(i - target), i))
    train = frozenset(rid for rid, _ in ordered[:cut])
    test = frozenset(rid for rid, _ in ordered[cut:])
    return TimeSplit(train=train, test=test, cut_ts=ordered[cut][1])
