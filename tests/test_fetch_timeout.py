"""How long the loop's fetch may wait (``Loop._fetch_timeout_ms``): the configured
timeout, cut short by the next commit once partitions are open, so that a quiet input
does not hold a due commit back (tests/integration/test_exactly_once_quiet.py shows it
on the real broker)."""

from __future__ import annotations

import time

from worker.config import build_config
from worker.runtime.exactly_once import ExactlyOnce
from worker.runtime.loop import Loop

FETCH_TIMEOUT_MS = 60_000


def make_loop(opened: bool = True) -> Loop:
    """A loop of one partition number, opened (or none open, as before the group's
    first assignment)."""
    config = build_config(
        {
            "kafka": {
                "delivery": "exactly-once",
                "commit_interval_ms": 5_000,
                "fetch_timeout_ms": FETCH_TIMEOUT_MS,
            },
            "fusion": {"labels": ["x", "y"]},
            "models": [{"name": "a"}, {"name": "b"}],
        }
    )
    loop = Loop(config, ExactlyOnce, clock_ms=lambda: 0.0)
    if opened:
        loop.state.open(0)
    return loop


def test_the_fetch_waits_at_most_until_the_next_commit_is_due() -> None:
    """A commit due in 5 s cuts a 60 s fetch timeout to about 5 s."""
    loop = make_loop()
    loop._next_commit = time.monotonic() + 5.0
    assert 4_000 <= loop._fetch_timeout_ms() <= 5_001


def test_a_commit_already_due_leaves_no_wait() -> None:
    """A commit that is due already (the first one is, from the start): the fetch
    returns at once."""
    assert make_loop()._fetch_timeout_ms() == 0


def test_without_open_partitions_the_commit_does_not_cut_the_fetch_short() -> None:
    """Before any partition is open nothing can wait for a commit: the fetch under way
    when the group assigns partitions keeps the configured timeout (the assignment
    callback opens them, tests/integration/test_exactly_once_open.py)."""
    assert make_loop(opened=False)._fetch_timeout_ms() == FETCH_TIMEOUT_MS


def test_a_commit_due_later_than_the_timeout_leaves_the_timeout() -> None:
    """The configured timeout holds when the next commit is further away."""
    loop = make_loop()
    loop._next_commit = time.monotonic() + 3_600.0
    assert loop._fetch_timeout_ms() == FETCH_TIMEOUT_MS
