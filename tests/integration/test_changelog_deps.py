"""Exactly-once pending state restored under a changed configuration, on the real
broker: reordered labels are realigned by name; a removed label stops the worker with
exit code 2 and a message naming it, before anything is published."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.chaos import reference
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import (
    EOS,
    LABELS,
    WorkerProcess,
    count_ids,
    make_events,
    read_committed,
    wait_committed,
)
from tests.kafka_fixtures import consume, decode_values, produce_json

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REQUESTS = 200


async def _kill_with_pending_state(
    p: Pipeline, spawn_worker: WorkerFactory, events: list[dict[str, Any]]
) -> WorkerProcess:
    """Run a worker under the test's labels on the first two models' events, wait until
    it has committed all of them (so the changelog holds both members of every request
    and none is consumed again), and kill it -9."""
    cfg = p.config("first.toml", kafka=EOS, join={"timeout_ms": 60_000})
    worker = spawn_worker(cfg, p.port, "first")
    worker.wait_ready()
    first_two = [e for e in events if e["model"] != "distilbert"]
    await produce_json(p.bootstrap, p.inputs[0], first_two)
    logged = await consume(
        p.bootstrap, f"{p.group}-pending-changelog", REQUESTS, isolation_level="read_committed"
    )
    assert len({r.key for r in logged}) == REQUESTS
    # An event consumed again by the restarted worker would, carrying no labels, be read
    # in its reversed order.
    await wait_committed(p.bootstrap, p.group, p.inputs[0], len(first_two), worker)
    worker.kill()
    return worker


async def test_reordered_labels_are_realigned_by_name_on_restore(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Restarted with the labels in reverse order, the restored members keep each
    probability with its label: every request's result, per label name, equals the
    uninterrupted run's under the original order."""
    p: Pipeline = await pipeline(partitions=2)
    events = make_events(REQUESTS, seed=31)
    await _kill_with_pending_state(p, spawn_worker, events)

    reordered = list(LABELS[::-1])
    cfg = p.config("second.toml", kafka=EOS, join={"timeout_ms": 60_000}, labels=reordered)
    second = spawn_worker(cfg, p.port, "second")
    second.wait_ready()
    # The third model names its order: the decoder aligns it to the new one.
    third = [{**e, "labels": list(LABELS)} for e in events if e["model"] == "distilbert"]
    await produce_json(p.bootstrap, p.inputs[0], third)
    results = await read_committed(p.bootstrap, p.output, REQUESTS)

    fused = decode_values(results)
    assert len(count_ids(fused)) == REQUESTS, second.logs()
    expected = reference(p.config("first.toml", kafka=EOS), events)
    for r in fused:
        assert r["status"] == "complete"
        assert r["labels"] == reordered
        want = expected[r["request_id"]]
        got = dict(zip(r["labels"], r["probs"], strict=True))
        for name, prob in zip(want["labels"], want["probs"], strict=True):
            assert math.isclose(got[name], prob, abs_tol=1e-12), (r, want)
        assert r["label"] == want["label"]
    assert "realigned: labels" in second.logs()


async def test_a_removed_label_stops_the_worker_with_exit_code_2(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Restarted without a label the saved probabilities use, the worker exits with code
    2 and a message naming the key and the label, and publishes nothing."""
    p: Pipeline = await pipeline(partitions=2)
    await _kill_with_pending_state(p, spawn_worker, make_events(REQUESTS, seed=32))

    fewer = [name for name in LABELS if name != "neutral"]
    cfg = p.config("second.toml", kafka=EOS, join={"timeout_ms": 60_000}, labels=fewer)
    second = spawn_worker(cfg, p.port, "second")
    assert second.proc is not None
    code = second.proc.wait(timeout=90)

    logs = second.logs()
    assert code == 2, logs
    assert "configuration error" in logs
    assert "fusion.labels" in logs
    assert "['neutral']" in logs
    assert await read_committed(p.bootstrap, p.output, 1, timeout_s=3) == []
