"""How long the loop's fetch waits for records (worker/runtime/loop.py,
``_fetch_timeout_ms``): the configured timeout with partitions open; only briefly while
none is, so that partitions assigned during a fetch are opened soon after it (exactly-once
opens them on the loop, after the fetch). No broker: the loop is built, not started."""

from __future__ import annotations

from worker.config import build_config
from worker.runtime.at_least_once import AtLeastOnce
from worker.runtime.exactly_once import ExactlyOnce
from worker.runtime.loop import UNOPENED_RECHECK_MS, Loop

CONFIG = {
    "kafka": {"fetch_timeout_ms": 100},
    "fusion": {"labels": ["x", "y"]},
    "models": [{"name": "a"}, {"name": "b"}],
}


def test_the_fetch_waits_only_briefly_while_no_partition_is_open() -> None:
    """Before the first assignment is opened, a fetch returns within a few ms, in
    either delivery mode."""
    for delivery in (AtLeastOnce, ExactlyOnce):
        loop = Loop(build_config(CONFIG), delivery)
        assert loop._fetch_timeout_ms() == UNOPENED_RECHECK_MS < 100


def test_the_fetch_waits_its_configured_timeout_once_a_partition_is_open() -> None:
    """With a partition open and nothing pending, a fetch waits ``fetch_timeout_ms``."""
    loop = Loop(build_config(CONFIG), AtLeastOnce)
    loop.state.open(0)
    assert loop._fetch_timeout_ms() == 100
