"""The streaming worker on the real broker: join, fuse, publish, commit — nothing lost."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest

from tests.integration.chaos import reference
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import MODELS, count_ids, free_port, make_events
from tests.kafka_fixtures import consume, decode_values, produce, produce_json

pytestmark = pytest.mark.kafka


async def produce_split(
    bootstrap: str, topics: Sequence[str], events: Sequence[dict[str, Any]]
) -> None:
    """One topic for all models, or topic i for model i."""
    if len(topics) == 1:
        await produce_json(bootstrap, topics[0], events)
        return
    for topic, model in zip(topics, MODELS, strict=True):
        await produce_json(bootstrap, topic, [e for e in events if e["model"] == model])


@pytest.mark.parametrize("inputs", [1, 3], ids=["shared-topic", "topic-per-model"])
async def test_every_request_fused_once_with_the_engine_values(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory, inputs: int
) -> None:
    """3 models x 5,000 requests on 4 partitions (one topic, or one per model): every
    request is fused exactly once, with the values the fusion engine gives."""
    p: Pipeline = await pipeline(partitions=4, inputs=inputs)
    # Topic per model: the three topics are produced one after the other, which on a
    # busy machine takes longer than the default timeout; this test is about joining.
    cfg = p.config(weights=[0.3, 0.4, 0.3], join={"timeout_ms": 60_000})
    events = make_events(5000, seed=inputs)
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()

    await produce_split(p.bootstrap, p.inputs, events)
    results = decode_values(await consume(p.bootstrap, p.output, 5000, timeout_s=90, idle_s=2))

    ids = count_ids(results)
    assert len(ids) == 5000
    assert [rid for rid, n in ids.items() if n > 1] == []
    expected = reference(cfg, events)
    for r in results:
        want = expected[r["request_id"]]
        assert r["status"] == "complete"
        assert r["label"] == want["label"]
        assert all(
            math.isclose(a, b, abs_tol=1e-12)
            for a, b in zip(r["probs"], want["probs"], strict=True)
        )


async def test_silent_model_gives_partial_at_the_deadline(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """When one model never reports, each request is fused at its deadline with status
    partial and that model listed in missing."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(join={"timeout_ms": 300, "min_models": 2})
    events = [e for e in make_events(50, seed=3) if e["model"] != "distilbert"]
    spawn_worker(cfg, p.port).wait_ready()

    await produce_json(p.bootstrap, p.inputs[0], events)
    results = decode_values(await consume(p.bootstrap, p.output, 50, timeout_s=30))

    assert len(results) == 50
    assert {r["status"] for r in results} == {"partial"}
    assert all(r["missing"] == ["distilbert"] for r in results)
    assert all(r["latency_ms"] >= 300 for r in results)


async def test_below_min_models_gives_insufficient(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """With fewer members than min_models at the deadline the result is insufficient,
    without a prediction, so downstream never waits forever."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(join={"timeout_ms": 300, "min_models": 2})
    events = [e for e in make_events(20, seed=4) if e["model"] == "bert-base"]
    spawn_worker(cfg, p.port).wait_ready()

    await produce_json(p.bootstrap, p.inputs[0], events)
    results = decode_values(await consume(p.bootstrap, p.output, 20, timeout_s=30))

    assert len(results) == 20
    assert {r["status"] for r in results} == {"insufficient"}
    assert all(r["label"] is None and r["probs"] is None for r in results)
    assert all(r["missing"] == ["roberta", "distilbert"] for r in results)


GARBAGE: list[tuple[str, bytes]] = [
    ("json", b"{not json"),
    ("schema", orjson.dumps({"request_id": 5, "model": "bert-base", "probs": [1, 0, 0]})),
    ("unknown_model", orjson.dumps({"request_id": "g1", "model": "gpt-9", "probs": [1, 0, 0]})),
    ("non_finite", b'{"request_id": "g2", "model": "bert-base", "probs": [NaN, 0.5, 0.5]}'),
    (
        "label_mismatch",
        orjson.dumps({"request_id": "g3", "model": "bert-base", "probs": [0.5, 0.5]}),
    ),
    ("too_large", b'{"request_id": "g4", "pad": "' + b"x" * 2_000_000 + b'"}'),
    ("schema", orjson.dumps({"model": "bert-base", "probs": [1, 0, 0]})),
]


async def test_garbage_goes_to_the_dlq_with_reasons_while_good_events_fuse(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Invalid events land in the DLQ with the original bytes, the reason and the source
    coordinates, interleaved good events are fused, and the worker keeps running."""
    p: Pipeline = await pipeline(partitions=1)
    cfg = p.config()
    good = make_events(30, seed=5)
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()

    records: list[tuple[bytes | None, bytes | None]] = []
    for i, e in enumerate(good):
        records.append((e["request_id"].encode(), orjson.dumps(e)))
        if i % 10 == 5 and i // 10 < len(GARBAGE):
            records.append((b"garbage", GARBAGE[i // 10][1]))
    await produce(p.bootstrap, p.inputs[0], records)

    results = decode_values(await consume(p.bootstrap, p.output, 30, timeout_s=30))
    dead = await consume(p.bootstrap, p.dlq, len(GARBAGE), timeout_s=30)

    assert len(count_ids(results)) == 30
    assert len(dead) == len(GARBAGE)
    by_value = {r.value: dict(r.headers) for r in dead}
    for reason, value in GARBAGE:
        headers = by_value[value]
        assert headers["error"].decode() == reason, (reason, headers)
        assert headers["source_topic"].decode() == p.inputs[0]
        assert int(headers["source_offset"].decode()) >= 0
    assert worker.proc is not None
    assert worker.proc.poll() is None


async def test_sigterm_with_pending_then_restart_loses_nothing(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """SIGTERM with requests pending exits 0 promptly without fusing them early; after a
    restart every request is fused."""
    p: Pipeline = await pipeline(partitions=2)
    cfg = p.config(join={"timeout_ms": 60_000, "min_models": 1})
    events = make_events(400, seed=6)
    complete = events[: 200 * 3]
    # Half the requests miss one model: they stay pending (deadline 60 s) at the SIGTERM.
    halves = [e for e in events[200 * 3 :] if e["model"] != "distilbert"]
    first = spawn_worker(cfg, p.port, "first")
    first.wait_ready()
    await produce_json(p.bootstrap, p.inputs[0], complete + halves)
    assert len(await consume(p.bootstrap, p.output, 200, timeout_s=30)) >= 200
    assert first.terminate(timeout_s=20) == 0

    second = spawn_worker(cfg, p.port, "second")
    second.wait_ready()
    late = [e for e in events[200 * 3 :] if e["model"] == "distilbert"]
    await produce_json(p.bootstrap, p.inputs[0], late)
    results = decode_values(await consume(p.bootstrap, p.output, 400, timeout_s=60, idle_s=2))

    ids = count_ids(results)
    assert set(ids) == {f"r-{i:06d}" for i in range(400)}
    restarted = [r for r in results if int(r["request_id"][2:]) >= 200]
    assert {r["status"] for r in restarted} == {"complete"}


async def test_kill_9_mid_stream_then_restart_loses_nothing(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """kill -9 while events stream in, then a restart: every request is fused (repeats
    are allowed at-least-once; the test prints how many)."""
    p: Pipeline = await pipeline(partitions=4)
    cfg = p.config(join={"timeout_ms": 2000})
    events = make_events(3000, seed=7)
    worker = spawn_worker(cfg, p.port, "first")
    worker.wait_ready()

    producing = asyncio.create_task(produce_json(p.bootstrap, p.inputs[0], events))
    await asyncio.sleep(0.5)
    worker.kill()
    await producing
    spawn_worker(cfg, p.port, "second").wait_ready()
    results = decode_values(await consume(p.bootstrap, p.output, 3000, timeout_s=60, idle_s=3))

    ids = count_ids(results)
    assert len(ids) == 3000
    repeats = sum(n - 1 for n in ids.values())
    print(f"kill -9: 3000 requests, {repeats} repeated results")


async def test_two_workers_share_the_partitions_without_repeats(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Two worker processes in one group split 4 partitions: every request is fused
    once, none twice while neither dies."""
    p: Pipeline = await pipeline(partitions=4)
    cfg_a = p.config("a.toml")
    port_b = free_port()  # not p.port + 1: that one may be taken by now
    cfg_b = p.config("b.toml", port=port_b)
    a = spawn_worker(cfg_a, p.port, "a")
    b = spawn_worker(cfg_b, port_b, "b")
    a.wait_ready()
    b.wait_ready()
    await asyncio.sleep(2)  # let the second join settle: both own partitions

    events = make_events(2000, seed=8)
    await produce_json(p.bootstrap, p.inputs[0], events)
    results = decode_values(await consume(p.bootstrap, p.output, 2000, timeout_s=60, idle_s=2))

    ids = count_ids(results)
    assert len(ids) == 2000
    assert Counter(ids.values()) == Counter({1: 2000})
