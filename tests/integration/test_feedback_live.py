"""Learning from labels on the real broker: the worker reads the labels topic beside the
inputs, the adaptive weights move towards the model the labels prove right, each result
names the weights it was fused with, the weights are snapshotted to the compacted
``<group_id>-weights`` topic, and a restarted worker resumes with them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import MODELS
from tests.kafka_fixtures import TopicFactory, consume, decode_values, produce, produce_json
from worker.murmur2 import partition_for

pytestmark = pytest.mark.kafka

N = 40
PARTITIONS = 2
# bert-base names the true label, roberta a wrong one, distilbert does not know.
PROBS = {
    "bert-base": [0.05, 0.05, 0.9],
    "roberta": [0.9, 0.05, 0.05],
    "distilbert": [1 / 3, 1 / 3, 1 / 3],
}


def events(prefix: str, n: int = N) -> list[dict[str, Any]]:
    return [
        {"request_id": f"{prefix}-{i:04d}", "model": m, "ts": 1_700_000_000_000 + i, "probs": p}
        for i in range(n)
        for m, p in PROBS.items()
    ]


def weights_of(result: dict[str, Any]) -> list[float]:
    return [result["members"][m]["weight"] for m in MODELS]


async def latest_snapshots(bootstrap: str, topic: str, timeout_s: float) -> dict[int, Any]:
    """The latest committed weights snapshot per partition number, once they have learnt
    from all N labels between them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    latest: dict[int, Any] = {}
    while loop.time() < deadline:
        records = await consume(
            bootstrap, topic, 1, timeout_s=2, idle_s=0.5, isolation_level="read_committed"
        )
        latest = {int(r.key): orjson.loads(r.value) for r in records}
        if sum(state["updates"] for state in latest.values()) == N:
            break
    return latest


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_labels_move_the_weights_and_a_restart_resumes_them(
    pipeline: Callable[..., Any],
    spawn_worker: WorkerFactory,
    make_topics: TopicFactory,
    delivery: str,
) -> None:
    """40 results fused with equal weights; their labels (bert-base right, roberta wrong)
    move the weights of both partition numbers towards bert-base; the weights topic
    holds them (exactly-once: committed with the transaction); the next results name
    them; after a restart the results name the same weights, not the configured ones."""
    p: Pipeline = await pipeline(partitions=PARTITIONS)
    (labels,) = await make_topics(PARTITIONS, prefix="labels")
    cfg = p.config(
        fusion={"weights": "adaptive"}, join={"timeout_ms": 500}, kafka={"delivery": delivery}
    )
    with cfg.open("a") as f:
        f.write(f'[feedback]\ntopic = "{labels}"\nlearning_rate = 0.5\nweight_floor = 0.02\n')
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()

    await produce_json(p.bootstrap, p.inputs[0], events("a"))
    first = decode_values(await consume(p.bootstrap, p.output, N, 60, "read_committed"))
    assert len(first) == N
    assert all(w == pytest.approx([1 / 3] * 3) for w in map(weights_of, first))

    truth = [
        (
            r["request_id"].encode(),
            orjson.dumps({"request_id": r["request_id"], "label": "positive"}),
        )
        for r in first
    ]
    await produce(p.bootstrap, labels, truth)
    snapshots = await latest_snapshots(p.bootstrap, f"{p.group}-weights", timeout_s=60)
    assert set(snapshots) == set(range(PARTITIONS)), worker.logs()
    for state in snapshots.values():
        bert, roberta, _ = state["weights"]
        assert bert > 0.6
        assert roberta < 0.1

    await produce_json(p.bootstrap, p.inputs[0], events("b"))
    results = decode_values(await consume(p.bootstrap, p.output, 2 * N, 60, "read_committed"))
    second = [r for r in results if r["request_id"].startswith("b-")]
    assert len(second) == N
    for r in second:
        state = snapshots[partition_for(r["request_id"].encode(), PARTITIONS)]
        assert weights_of(r) == pytest.approx(state["weights"], rel=1e-9)

    assert worker.terminate() == 0
    again = spawn_worker(cfg, p.port, name="restarted")
    again.wait_ready()
    await produce_json(p.bootstrap, p.inputs[0], events("c"))
    results = decode_values(await consume(p.bootstrap, p.output, 3 * N, 60, "read_committed"))
    third = [r for r in results if r["request_id"].startswith("c-")]
    assert len(third) == N, again.logs()
    for r in third:
        state = snapshots[partition_for(r["request_id"].encode(), PARTITIONS)]
        assert weights_of(r) == pytest.approx(state["weights"], rel=1e-9)


async def test_a_labels_topic_not_co_partitioned_stops_the_worker_at_start(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory, make_topics: TopicFactory
) -> None:
    """A labels topic with another partition count than the inputs: the worker exits
    with a message naming the topic and both counts."""
    p: Pipeline = await pipeline(partitions=PARTITIONS)
    (labels,) = await make_topics(PARTITIONS + 1, prefix="labels")
    cfg = p.config()
    with cfg.open("a") as f:
        f.write(f'[feedback]\ntopic = "{labels}"\n')
    worker = spawn_worker(cfg, p.port)
    assert worker.proc is not None
    assert await asyncio.to_thread(worker.proc.wait, 60) == 1
    assert f"labels topic {labels} has 3 partitions, the inputs 2" in worker.logs()
