"""The engine step (worker/engine.py): the pure core every command drives. Event time:
the results do not depend on how the input is split into steps; live: what a step emits,
per input partition, in input order."""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.config import Config, build_config
from worker.engine import Engine, InRecord
from worker.fusion import Fuser

MODELS = ["bert-base", "roberta", "distil"]
LABELS = ["negative", "neutral", "positive"]


def config(**kafka: Any) -> Config:
    return build_config(
        {
            "kafka": {"late_topic": "late", **kafka},
            "join": {"timeout_ms": 1000, "min_models": 1},
            "fusion": {"strategy": "soft_vote", "labels": LABELS},
            "models": [{"name": m} for m in MODELS],
        }
    )


def pred(rid: str, model: str, ts: int, probs: tuple[float, ...] = (0.2, 0.3, 0.5)) -> bytes:
    return orjson.dumps({"request_id": rid, "model": model, "ts": ts, "probs": probs})


def events(n: int, seed: int, partitions: int = 2) -> list[InRecord]:
    """n requests over ``partitions`` partitions, models late, silent or repeated at
    random; in ts order, with a few invalid records among them."""
    rng = random.Random(seed)
    rows: list[tuple[int, int, bytes]] = []
    for i in range(n):
        start = 1_700_000_000_000 + i * 53
        p = i % partitions
        for model in MODELS:
            roll = rng.random()
            if roll < 0.1:
                continue
            delay = rng.randint(0, 1500) if roll < 0.3 else rng.randint(0, 400)
            a, b = sorted((rng.random(), rng.random()))
            rows.append(
                (start + delay, p, pred(f"req-{i}", model, start + delay, (a, b - a, 1 - b)))
            )
            if roll > 0.9:
                rows.append((start + delay + 3, p, b"{broken"))
    rows.sort(key=lambda r: r[0])
    return [InRecord("in", p, i, None, value) for i, (_, p, value) in enumerate(rows)]


def run_offline(records: list[InRecord], cuts: list[int]) -> list[bytes]:
    engine = Engine(config(), Fuser(config()), event_time=True, encode=False)
    out: list[dict[str, Any]] = []
    start = 0
    for cut in [*sorted(cuts), len(records)]:
        out += engine.step(records[start:cut]).results
        start = max(start, cut)
    out += engine.finish().results
    return [orjson.dumps(r) for r in out]


RECORDS = events(120, seed=11)
WHOLE = run_offline(RECORDS, [])


@settings(max_examples=60)
@given(st.lists(st.integers(0, len(RECORDS)), max_size=12))
def test_any_split_into_steps_gives_the_same_results(cuts: list[int]) -> None:
    """Event time: the fused results (bytes, order) are those of a single step, however
    the same records are split into steps."""
    assert run_offline(RECORDS, cuts) == WHOLE


def test_every_request_is_fused_once_offline() -> None:
    """Event time: each request with a valid event gives exactly one result."""
    ids = [orjson.loads(r)["request_id"] for r in WHOLE]
    assert (
        len(ids)
        == len(set(ids))
        == 120
        - sum(
            1
            for i in range(120)
            if f'"req-{i}"'.encode() not in b"".join(r.value or b"" for r in RECORDS)
        )
    )


def test_live_step_routes_outputs_per_partition_in_input_order() -> None:
    """Live: a dead letter comes where its record was, the fused results after it, each
    on its input partition number; records of a partition not opened are ignored."""
    engine = Engine(config(), Fuser(config()))
    engine.open(0)
    engine.open(1)
    recs = [
        InRecord("in", 0, 5, b"a", pred("a", "bert-base", 1)),
        InRecord("in", 0, 6, b"x", b"{broken", None, (("traceparent", b"t1"),)),
        InRecord("in", 1, 9, b"b", pred("b", "bert-base", 1)),
        InRecord("in", 2, 3, b"c", pred("c", "bert-base", 1)),
    ]
    step = engine.step(recs, now_ms=0)
    assert [r.topic for r in step.outputs[0]] == ["fusion-dlq"]
    assert 1 not in step.outputs
    assert 2 not in step.outputs
    assert step.positions == {("in", 0): 7, ("in", 1): 10}
    step = engine.step([], now_ms=1000)
    assert [(r.topic, r.key) for r in step.outputs[0]] == [("fused", b"a")]
    assert [(r.topic, r.key) for r in step.outputs[1]] == [("fused", b"b")]


def test_a_dead_letter_keeps_the_original_headers() -> None:
    """The original record's headers come first, the error headers after them."""
    engine = Engine(config(), Fuser(config()))
    engine.open(0)
    rec = InRecord("in", 0, 6, b"x", b"{broken", None, (("traceparent", b"t1"),))
    [dead] = engine.step([rec], now_ms=0).outputs[0]
    assert dead.headers is not None
    assert dead.headers[0] == ("traceparent", b"t1")
    assert dict(dead.headers)["error"] == b"json"


def test_a_record_keyed_otherwise_is_a_key_mismatch() -> None:
    """With check_keys, a valid event whose record key is not its request_id is a dead
    letter with reason key_mismatch, and is not joined."""
    engine = Engine(config(), Fuser(config()), check_keys=True)
    engine.open(0)
    step = engine.step([InRecord("in", 0, 1, b"other", pred("r", "bert-base", 1))], now_ms=0)
    assert step.dead_letters == {"key_mismatch": 1}
    assert engine.pending == 0


def test_without_check_keys_the_key_is_not_compared() -> None:
    """check_keys off (single-partition topics): the event joins whatever its key."""
    engine = Engine(config(), Fuser(config()), check_keys=False)
    engine.open(0)
    step = engine.step([InRecord("in", 0, 1, b"other", pred("r", "bert-base", 1))], now_ms=0)
    assert not step.dead_letters
    assert engine.pending == 1


def test_check_keys_defaults_to_true() -> None:
    """[kafka] check_keys is on unless switched off."""
    assert config().kafka.check_keys is True
    assert config(check_keys=False).kafka.check_keys is False
