"""``fusion-worker replay --labels`` on the real broker: each partition number learns
from its own labels, as the live worker does, and the results equal those of
``fuse --partitions N --labels`` on the same file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.test_replay import LABELS, config, events, replay, write_jsonl
from tests.kafka_fixtures import TopicFactory, produce_json
from worker.offline import run_fuse

pytestmark = pytest.mark.kafka


async def test_replay_with_labels_equals_fuse_with_labels(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """Labels that always agree with bert-base move its weight up in the replayed
    results; replay and ``fuse --partitions 4`` with the same labels give the same lines."""
    (topic,) = await make_topics(4, prefix="replay-labels")
    evs = events(400, seed=5)
    source = write_jsonl(tmp_path / "events.jsonl", evs)
    truth = {
        e["request_id"]: {
            "request_id": e["request_id"],
            "label": LABELS[int(np.argmax(e["probs"]))],
            "ts": e["ts"] + 1500,
        }
        for e in evs
        if e["model"] == "bert-base"
    }
    labels = write_jsonl(tmp_path / "labels.jsonl", sorted(truth.values(), key=lambda d: d["ts"]))
    await produce_json(kafka_bootstrap, topic, evs)
    cfg = config(kafka_bootstrap, [topic], weights="adaptive")
    fused = tmp_path / "fused.jsonl"
    assert await asyncio.to_thread(run_fuse, cfg, source, fused, 4, None, labels) == 0
    replayed = await replay(cfg, tmp_path / "replayed.jsonl", labels=labels)
    assert sorted(replayed) == sorted(fused.read_bytes().splitlines())
    bert = [
        r["members"]["bert-base"]["weight"]
        for r in map(orjson.loads, replayed)
        if r["status"] == "complete"
    ]
    # Configured 0.5 of 0.5 + 0.3 + 0.2: the labels raise it (learning rate 0.01).
    assert bert[0] == 0.5
    assert max(bert) > 0.55
