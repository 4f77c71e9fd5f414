"""The time-ordered split of `backtest --fit`: no request on both sides, no later
request in the training part."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.backtest.split import time_split
from worker.errors import FusionError

first_times = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=6), st.integers(0, 50), min_size=2, max_size=60
).filter(lambda d: len(set(d.values())) >= 2)


@given(first_times, st.floats(0.05, 0.95))
def test_every_train_request_starts_before_every_test_request(
    first_ts: dict[str, int], share: float
) -> None:
    """Every train request's first ts is strictly below every test request's first ts."""
    split = time_split(first_ts, share)
    assert split.train
    assert split.test
    assert max(first_ts[r] for r in split.train) < min(first_ts[r] for r in split.test)
    assert split.cut_ts == min(first_ts[r] for r in split.test)


@given(first_times, st.floats(0.05, 0.95))
def test_sides_are_disjoint_and_cover_every_request(first_ts: dict[str, int], share: float) -> None:
    """No request id is on both sides, and none is lost."""
    split = time_split(first_ts, share)
    assert not split.train & split.test
    assert split.train | split.test == set(first_ts)


@given(st.integers(2, 300), st.floats(0.05, 0.95))
def test_distinct_times_cut_at_the_requested_share(n: int, share: float) -> None:
    """With distinct first times the train part is the earliest floor(n * share) requests
    (at least one request on each side)."""
    first_ts = {f"r{i}": 1000 + 7 * i for i in range(n)}
    split = time_split(first_ts, share)
    expected = min(max(int(n * share), 1), n - 1)
    assert len(split.train) == expected
    assert split.train == {f"r{i}" for i in range(expected)}


def test_ties_at_the_cut_stay_together() -> None:
    """Requests sharing the first time at the cut all go to one side."""
    first_ts = {"a": 1, "b": 2, "c": 3, "d": 3, "e": 3, "f": 4}
    split = time_split(first_ts, 0.5)
    assert {"c", "d", "e"} <= split.train or {"c", "d", "e"} <= split.test


def test_one_distinct_time_cannot_be_split() -> None:
    """All requests starting at once cannot be split by time: a FusionError says so."""
    with pytest.raises(FusionError, match="distinct first event times"):
        time_split({"a": 5, "b": 5, "c": 5})


def test_share_outside_the_unit_interval_is_refused() -> None:
    """A train share of 0 or 1 would leave one side empty: refused, naming the value."""
    with pytest.raises(FusionError, match=r"1\.0"):
        time_split({"a": 1, "b": 2}, 1.0)
