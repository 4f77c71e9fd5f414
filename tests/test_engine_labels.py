"""The engine step with labels, live clock: label records of the labels topic join the
feedback memory of their partition number; the outcomes, the quality windows and the
moved weights are in the step's tallies; the next results name the moved weights; a
broken label is a dead letter; weights are per partition number."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from worker.config import Config, build_config
from worker.engine import Engine, InRecord
from worker.fusion import Fuser
from worker.learning import Learning

MODELS = ["a", "b", "c"]
PROBS = {"a": [0.9, 0.1], "b": [0.1, 0.9], "c": [0.5, 0.5]}


def config(weights: str = "adaptive") -> Config:
    return build_config(
        {
            "kafka": {"input_topics": ["in"]},
            "fusion": {"labels": ["x", "y"], "weights": weights},
            "feedback": {"topic": "labels", "learning_rate": 0.5},
            "models": [{"name": m} for m in MODELS],
        }
    )


def engine(weights: str = "adaptive") -> Engine:
    cfg = config(weights)
    fuser = Fuser(cfg)
    e = Engine(cfg, fuser, check_keys=True, learning=Learning(cfg, fuser.weights))
    e.open(0)
    e.open(1)
    return e


def predictions(rid: str, partition: int = 0, offset: int = 0) -> list[InRecord]:
    return [
        InRecord(
            "in",
            partition,
            offset + i,
            rid.encode(),
            orjson.dumps({"request_id": rid, "model": m, "probs": p, "ts": 1}),
        )
        for i, (m, p) in enumerate(PROBS.items())
    ]


def label(rid: str, value: str = "x", partition: int = 0, offset: int = 0) -> InRecord:
    doc = {"request_id": rid, "label": value, "ts": 2}
    return InRecord("labels", partition, offset, rid.encode(), orjson.dumps(doc))


def weights(result: dict[str, object]) -> list[float]:
    members = result["members"]
    assert isinstance(members, dict)
    return [members[m]["weight"] for m in MODELS]


def test_a_label_joins_the_fused_request_and_moves_the_weights() -> None:
    """The label of a request fused in an earlier step is joined; the step reports the
    outcome, the quality and the partition's new weights, which the next result names."""
    e = engine()
    first = e.step(predictions("r1"), now_ms=10)
    assert weights(first.results[0]) == pytest.approx([1 / 3] * 3)
    step = e.step([label("r1")], now_ms=20)
    assert step.feedback == {"joined": 1}
    assert step.quality is not None
    assert step.quality["a"].accuracy == 1.0
    assert step.quality["b"].accuracy == 0.0
    moved = step.weights[0]
    assert moved[0] > 1 / 3 > moved[1]
    after = e.step(predictions("r2", offset=3), now_ms=30)
    assert weights(after.results[0]) == pytest.approx(moved.tolist(), rel=1e-12)
    assert step.positions == {("labels", 0): 1}


def test_weights_are_per_partition_number() -> None:
    """A label on partition 0 moves partition 0's weights only."""
    e = engine()
    e.step(predictions("r1"), now_ms=10)
    e.step([label("r1")], now_ms=20)
    other = e.step(predictions("r9", partition=1), now_ms=30)
    assert weights(other.results[0]) == pytest.approx([1 / 3] * 3)


def test_unknown_and_duplicate_labels_are_counted_by_outcome() -> None:
    """A label for a request never fused here is unknown; a second one is duplicate;
    neither moves the weights."""
    e = engine()
    e.step(predictions("r1"), now_ms=10)
    step = e.step([label("nope"), label("r1", offset=1), label("r1", offset=2)], now_ms=20)
    assert step.feedback == {"unknown": 1, "joined": 1, "duplicate": 1}


def test_static_weights_score_quality_but_do_not_move() -> None:
    """With static weights the label is joined and scored; the weights stay."""
    e = engine("static")
    e.step(predictions("r1"), now_ms=10)
    step = e.step([label("r1")], now_ms=20)
    assert step.feedback == {"joined": 1}
    assert step.quality is not None
    assert step.weights == {}
    after = e.step(predictions("r2", offset=3), now_ms=30)
    assert weights(after.results[0]) == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (InRecord("labels", 0, 0, b"r1", b"{"), "json"),
        (
            InRecord("labels", 0, 0, b"r1", b'{"request_id": "r1", "label": "z", "ts": 1}'),
            "unknown_label",
        ),
        (
            InRecord("labels", 0, 0, b"other", b'{"request_id": "r1", "label": "x", "ts": 1}'),
            "key_mismatch",
        ),
    ],
)
def test_a_broken_label_is_a_dead_letter(record: InRecord, reason: str) -> None:
    """A label record the contract rejects goes to the DLQ with its reason, in place."""
    e = engine()
    step = e.step([record], now_ms=1)
    assert step.dead_letters == {reason: 1}
    (dead,) = step.outputs[0]
    assert dead.topic == "fusion-dlq"
    assert dict(dead.headers or [])["error"] == reason.encode()


def test_a_closed_partition_forgets_its_weights() -> None:
    """After close/open (a rebalance), a partition fuses with the configured weights
    until its snapshot is restored."""
    e = engine()
    e.step(predictions("r1"), now_ms=10)
    moved = e.step([label("r1")], now_ms=20).weights[0]
    assert e.learning is not None
    state = e.learning.state(0)
    e.close(0)
    e.open(0)
    fresh = e.step(predictions("r2", offset=3), now_ms=30)
    assert weights(fresh.results[0]) == pytest.approx([1 / 3] * 3)
    e.learning.restore(0, state)
    resumed = e.step(predictions("r3", offset=6), now_ms=40)
    np.testing.assert_allclose(weights(resumed.results[0]), moved, rtol=1e-12)
