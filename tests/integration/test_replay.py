"""`fusion-worker replay` against the real broker: deterministic, equal to `fuse` on the
same file, selecting by time, several strategies in one pass."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.kafka_fixtures import TopicFactory, consume, produce_json
from worker.backtest.inputs import load_labels, load_predictions
from worker.backtest.run import backtest
from worker.config import Config, build_config
from worker.offline import run_fuse
from worker.replay import run_replay

pytestmark = pytest.mark.kafka

LABELS = ["negative", "neutral", "positive"]
MODELS = ["bert-base", "roberta", "distilbert"]
T0 = 1_700_000_000_000


def config(bootstrap: str, inputs: Sequence[str], **fusion: Any) -> Config:
    return build_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "input_topics": list(inputs)},
            "join": {"timeout_ms": 500, "min_models": 2},
            "fusion": {"labels": LABELS, **fusion},
            "models": [
                {"name": m, "weight": w} for m, w in zip(MODELS, [0.5, 0.3, 0.2], strict=True)
            ],
        }
    )


def events(n: int, seed: int = 3, prefix: str = "r", t0: int = T0) -> list[dict[str, Any]]:
    """Events of ``n`` requests, 100 ms apart; each model late or silent now and then, so
    that the results mix complete, partial and insufficient ones."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        for m in MODELS:
            if rng.random() < 0.15:
                continue
            delay = int(rng.integers(0, 900))  # beyond timeout_ms now and then: late
            out.append(
                {
                    "request_id": f"{prefix}-{i:05d}",
                    "model": m,
                    "ts": t0 + 100 * i + delay,
                    "probs": rng.dirichlet(np.ones(3)).tolist(),
                }
            )
    out.sort(key=lambda e: e["ts"])
    return out


async def produce_timed(bootstrap: str, topic: str, docs: Sequence[dict[str, Any]]) -> None:
    """Produce events keyed by request_id with the record timestamp set to their ts."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, orjson.dumps(e), key=e["request_id"].encode(), timestamp_ms=e["ts"]
            )
            for e in docs
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def request_ids(docs: Sequence[dict[str, Any]]) -> set[str]:
    return {d["request_id"] for d in docs}


def write_jsonl(path: Path, docs: Sequence[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    return path


async def replay(
    cfg: Config, out: Path, start: str = "earliest", end: str = "latest", **kw: Any
) -> list[bytes]:
    code = await asyncio.to_thread(run_replay, cfg, start, end, out, progress=False, **kw)
    assert code == 0
    return (await asyncio.to_thread(out.read_bytes)).splitlines()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


async def test_two_replays_of_one_range_are_byte_identical(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """Replaying the same range twice writes the same bytes; two input topics are merged
    by record timestamp, so each request is fused once."""
    a, b = await make_topics(3, count=2, prefix="replay-in")
    evs = events(300)
    await produce_timed(kafka_bootstrap, a, [e for e in evs if e["model"] != "roberta"])
    await produce_timed(kafka_bootstrap, b, [e for e in evs if e["model"] == "roberta"])
    cfg = config(kafka_bootstrap, [a, b])
    first = await replay(cfg, tmp_path / "one.jsonl")
    second = await replay(cfg, tmp_path / "two.jsonl")
    assert sorted(orjson.loads(line)["request_id"] for line in first) == sorted(request_ids(evs))
    assert first == second


async def test_replay_equals_fuse_on_the_same_file(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """A topic filled from a file in file order replays to the lines `fuse --partitions N`
    writes for that file (compared as sorted lines: the orders differ)."""
    (topic,) = await make_topics(4, prefix="replay-in")
    evs = events(400, seed=5)
    source = write_jsonl(tmp_path / "events.jsonl", evs)
    await produce_json(kafka_bootstrap, topic, evs)
    cfg = config(kafka_bootstrap, [topic])
    fused = tmp_path / "fused.jsonl"
    assert await asyncio.to_thread(run_fuse, cfg, source, fused, 4) == 0
    replayed = await replay(cfg, tmp_path / "replayed.jsonl")
    statuses = {orjson.loads(line)["status"] for line in replayed}
    assert statuses == {"complete", "partial", "insufficient"}
    assert sorted(replayed) == sorted(fused.read_bytes().splitlines())


async def test_time_range_selects_only_the_records_in_it(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """--from/--to as ISO timestamps select records by record timestamp, end exclusive."""
    (topic,) = await make_topics(2, prefix="replay-in")
    hour = 3_600_000
    batches = {name: events(50, prefix=name, t0=T0 + k * hour) for k, name in enumerate("abc")}
    await produce_timed(kafka_bootstrap, topic, [e for evs in batches.values() for e in evs])
    cfg = config(kafka_bootstrap, [topic])
    lines = await replay(cfg, tmp_path / "b.jsonl", iso(T0 + hour), iso(T0 + 2 * hour))
    ids = {orjson.loads(line)["request_id"] for line in lines}
    assert ids == request_ids(batches["b"])


async def test_several_strategies_in_one_pass(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """With three strategies every request has one result per strategy, each equal to
    the line a single-strategy replay writes."""
    (topic,) = await make_topics(2, prefix="replay-in")
    evs = events(150, seed=8)
    await produce_json(kafka_bootstrap, topic, evs)
    cfg = config(kafka_bootstrap, [topic])
    names = ["soft_vote", "hard_vote", "geometric_mean"]
    together = await replay(cfg, tmp_path / "all.jsonl", strategies=names)
    assert len(together) == 3 * len(request_ids(evs))
    for name in names:
        alone = await replay(cfg, tmp_path / f"{name}.jsonl", strategies=[name])
        mine = [line for line in together if orjson.loads(line)["strategy"] == name]
        assert mine == alone


async def test_replay_to_a_topic_keys_results_by_request_id(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """--topic publishes every result keyed by its request_id."""
    (topic,) = await make_topics(2, prefix="replay-in")
    (out,) = await make_topics(2, prefix="replay-out")
    evs = events(80, seed=9)
    await produce_json(kafka_bootstrap, topic, evs)
    cfg = config(kafka_bootstrap, [topic])
    code = await asyncio.to_thread(run_replay, cfg, "earliest", "latest", None, out, None, False)
    assert code == 0
    records = await consume(kafka_bootstrap, out, expected=len(request_ids(evs)))
    assert sorted(orjson.loads(r.value)["request_id"] for r in records) == sorted(request_ids(evs))
    assert all(r.key == orjson.loads(r.value)["request_id"].encode() for r in records)


async def test_offset_positions_bound_the_range(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """offset:N reads from offset N (inclusive) to the end offset (exclusive)."""
    (topic,) = await make_topics(1, prefix="replay-in")
    # One single-model config: each event is a request of its own, fused at once.
    evs = [
        {"request_id": f"o-{i}", "model": "bert-base", "ts": T0 + i, "probs": [1.0, 0.0, 0.0]}
        for i in range(10)
    ]
    await produce_json(kafka_bootstrap, topic, evs)
    cfg = build_config(
        {
            "kafka": {"bootstrap_servers": kafka_bootstrap, "input_topics": [topic]},
            "fusion": {"labels": LABELS},
            "models": [{"name": "bert-base"}],
        }
    )
    lines = await replay(cfg, tmp_path / "o.jsonl", "offset:3", "offset:7")
    assert [orjson.loads(line)["request_id"] for line in lines] == ["o-3", "o-4", "o-5", "o-6"]


async def test_backtest_reads_predictions_and_labels_from_topics(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path
) -> None:
    """`backtest` given TOPIC@earliest..latest scores exactly as on the same file (one
    partition: the file is joined as one partition too)."""
    preds, labels = await make_topics(1, count=2, prefix="backtest-in")
    evs = events(200, seed=11)
    truth = [
        {"request_id": rid, "label": LABELS[i % 3]}
        for i, rid in enumerate(sorted(request_ids(evs)))
    ]
    await produce_json(kafka_bootstrap, preds, evs)
    await produce_json(kafka_bootstrap, labels, truth)
    source = write_jsonl(tmp_path / "events.jsonl", evs)
    label_file = write_jsonl(tmp_path / "labels.jsonl", truth)
    cfg = config(kafka_bootstrap, [preds])

    def table(predictions: str, label_spec: str) -> str:
        records = load_predictions(cfg, predictions, progress=False)
        return backtest(cfg, records, load_labels(cfg, label_spec)).table

    from_topics = await asyncio.to_thread(
        table, f"{preds}@earliest..latest", f"{labels}@earliest..latest"
    )
    from_files = await asyncio.to_thread(table, str(source), str(label_file))
    assert from_topics == from_files
