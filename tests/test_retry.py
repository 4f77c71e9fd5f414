"""The one backoff of the runtime (worker/runtime/retry.py): exponential, capped, with
jitter; and the one policy of fatal errors."""

from __future__ import annotations

import random

import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from worker.runtime.retry import Backoff, is_fatal


def test_waits_double_up_to_the_cap_each_within_half_and_all_of_its_step() -> None:
    """Step k waits in [step/2, step], step = base * 2**k capped at max."""
    b = Backoff(100, 1000, rng=random.Random(3))
    steps = [100, 200, 400, 800, 1000, 1000]
    for step in steps:
        wait_ms = b.next_s() * 1000
        assert step / 2 <= wait_ms <= step


def test_jitter_spreads_replicas_that_failed_together() -> None:
    """Two replicas with their own randomness do not wait the same."""
    a, b = Backoff(500, rng=random.Random(1)), Backoff(500, rng=random.Random(2))
    assert [a.next_s() for _ in range(5)] != [b.next_s() for _ in range(5)]


def test_reset_starts_from_the_base_again() -> None:
    """After a success the next failure waits from the base."""
    b = Backoff(100, rng=random.Random(0))
    for _ in range(5):
        b.next_s()
    b.reset()
    assert b.next_s() <= 0.1


def test_a_base_of_zero_is_refused() -> None:
    """The constructor names the bad value."""
    with pytest.raises(ValueError, match="got 0"):
        Backoff(0)


def test_credentials_and_permissions_are_fatal_an_outage_is_not() -> None:
    """Waiting cures an outage, not a refused permission."""
    assert is_fatal(TopicAuthorizationFailedError())
    assert not is_fatal(KafkaConnectionError())
