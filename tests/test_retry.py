"""The one backoff of the runtime (worker/runtime/retry.py): exponential, capped, with
jitter; and the one policy of fatal errors."""

from __future__ import annotations

import random

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from worker.errors import KafkaSetupError
from worker.runtime.retry import _FATAL, Backoff, TopicWatch, fatal_message, is_fatal


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


@pytest.mark.parametrize(
    "name",
    [
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
        "ClusterAuthorizationFailedError",
        "TransactionalIdAuthorizationFailed",
        "SaslAuthenticationFailed",
    ],
)
def test_every_authorization_failure_is_fatal(name: str) -> None:
    """Topic, group, cluster and transactional-id authorization failures (and failed
    authentication) stop the worker: no wait grants an ACL."""
    assert is_fatal(getattr(kafka_errors, name)())


@pytest.mark.parametrize(
    "name", ["InvalidConfigurationError", "InvalidRequestError", "PolicyViolationError"]
)
def test_a_configuration_the_broker_refuses_is_fatal(name: str) -> None:
    """An invalid config or request is refused again on every retry."""
    assert is_fatal(getattr(kafka_errors, name)())


@pytest.mark.parametrize(
    "name",
    [
        "KafkaConnectionError",
        "NodeNotReadyError",
        "RequestTimedOutError",
        "KafkaTimeoutError",
        "NotLeaderForPartitionError",
        "NotCoordinatorForGroupError",
        "UnknownTopicOrPartitionError",
        "LeaderNotAvailableError",
    ],
)
def test_retriable_errors_are_not_fatal(name: str) -> None:
    """Outages, leader moves and a topic missing for a moment are retried with backoff
    (a missing topic becomes fatal only through TopicWatch's bound)."""
    assert not is_fatal(getattr(kafka_errors, name)())


def test_every_fatal_name_is_an_aiokafka_error_class() -> None:
    """The policy names classes aiokafka has: a misspelt name would never match."""
    missing = sorted(n for n in _FATAL if not hasattr(kafka_errors, n))
    assert missing == []


def test_the_stop_message_says_what_to_do() -> None:
    """An authorization failure's message names the error and asks for the ACL."""
    text = fatal_message(kafka_errors.TransactionalIdAuthorizationFailed())
    assert text.startswith("TransactionalIdAuthorizationFailed")
    assert "ACL" in text


def test_a_topic_missing_for_less_than_the_bound_is_tolerated() -> None:
    """A topic missing for a moment (being created, a metadata race) does not stop."""
    watch = TopicWatch(3000)
    watch.observe({"in"}, 10.0)
    watch.observe({"in"}, 12.9)


def test_a_topic_missing_past_the_bound_stops_with_its_name() -> None:
    """Missing for unknown_topic_timeout_ms: KafkaSetupError naming topic and key."""
    watch = TopicWatch(3000)
    watch.observe({"in", "out"}, 10.0)
    watch.observe({"out"}, 11.0)
    with pytest.raises(
        KafkaSetupError, match=r"topic out does not exist.*unknown_topic_timeout_ms"
    ):
        watch.observe({"out"}, 13.0)


def test_a_topic_seen_again_starts_its_clock_afresh() -> None:
    """Missing, back, missing again: the bound counts from the second disappearance."""
    watch = TopicWatch(3000)
    watch.observe({"in"}, 10.0)
    watch.observe(set(), 12.0)
    watch.observe({"in"}, 14.0)
    watch.observe({"in"}, 16.5)
    with pytest.raises(KafkaSetupError):
        watch.observe({"in"}, 17.0)


def test_backoff_without_rng_does_not_seed_a_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Backoff made without ``rng`` draws from one shared generator: the sink makes a
    Backoff per batch it submits, and seeding a Random reads the OS's entropy each time."""

    def refuse(*_: object) -> None:
        raise AssertionError("a Random was seeded")

    monkeypatch.setattr(random.Random, "seed", refuse)
    b = Backoff(100, 1000)
    assert 0.05 <= b.next_s() <= 0.1
