"""Errors waiting will not cure stop the worker with a clear message and a non-zero exit,
within a bound (worker/runtime/retry.py), on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import make_events
from tests.kafka_fixtures import produce_json

pytestmark = pytest.mark.kafka

UNKNOWN_TOPIC_TIMEOUT_MS = 3000
SHUTDOWN_TIMEOUT_MS = 4000


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


@pytest.mark.parametrize("which", ["input", "output"])
async def test_a_topic_deleted_while_running_stops_the_worker_naming_it(
    which: str, pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """An input (or the output) topic deleted under a running worker: it exits non-zero
    within unknown_topic_timeout_ms plus the check interval and the shutdown budget,
    and its last words name the topic and the key that bounds the wait."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(
        kafka={
            "unknown_topic_timeout_ms": UNKNOWN_TOPIC_TIMEOUT_MS,
            "shutdown_timeout_ms": SHUTDOWN_TIMEOUT_MS,
        },
        join={"timeout_ms": 500},
    )
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    await produce_json(p.bootstrap, p.inputs[0], make_events(50, seed=31))
    topic = p.inputs[0] if which == "input" else p.output
    await delete_topic(p.bootstrap, topic)
    started = time.monotonic()
    assert worker.proc is not None
    code = await asyncio.to_thread(worker.proc.wait, 60)
    took = time.monotonic() - started

    assert code != 0, worker.logs()
    # The bound, a check interval, a commit interval, the shutdown budget, start-up slack.
    assert took < (UNKNOWN_TOPIC_TIMEOUT_MS + 1000 + 1000 + SHUTDOWN_TIMEOUT_MS) / 1000 + 5
    last = worker.logs().strip().splitlines()[-3:]
    assert any(topic in line and "unknown_topic_timeout_ms" in line for line in last), last
