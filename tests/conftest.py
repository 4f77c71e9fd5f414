"""Shared test set-up: hypothesis profile (fixed seeds) and the real Kafka fixtures."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Fixed seeds: a failure seen once is seen again; CI runs the same examples as a laptop.
settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")

pytest_plugins = ["tests.kafka_fixtures"]
