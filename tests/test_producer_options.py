"""The options of the producers the worker opens (``producer_options``): a
transactional producer retries after at most ``TXN_RETRY_BACKOFF_MS``, the others after
the configured ``retry_backoff_ms``."""

from __future__ import annotations

from worker.config import KafkaConfig, build_config
from worker.runtime.connect import TXN_RETRY_BACKOFF_MS, producer_options


def kafka(**keys: object) -> KafkaConfig:
    config = build_config(
        {
            "kafka": keys,
            "fusion": {"labels": ["x", "y"]},
            "models": [{"name": "a"}, {"name": "b"}],
        }
    )
    return config.kafka


def test_a_transactional_producer_retries_sooner_than_the_default_backoff() -> None:
    """With the default 500 ms, a transactional producer retries after 100 ms."""
    cfg = kafka()
    assert cfg.retry_backoff_ms > TXN_RETRY_BACKOFF_MS
    assert producer_options(cfg, transactional_id="g-0")["retry_backoff_ms"] == 100


def test_a_plain_producer_keeps_the_configured_backoff() -> None:
    """The shared idempotent producer retries after ``retry_backoff_ms`` as configured."""
    assert producer_options(kafka())["retry_backoff_ms"] == 500


def test_a_shorter_configured_backoff_holds_for_a_transactional_producer() -> None:
    """The cap only shortens: a configured 50 ms stays 50 ms."""
    cfg = kafka(retry_backoff_ms=50)
    assert producer_options(cfg, transactional_id="g-0")["retry_backoff_ms"] == 50
