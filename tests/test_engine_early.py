"""Early decision through the engine step (what `run`, `fuse` and `replay` drive): a
request whose missing members cannot change its label closes as ``decided``, with the
label the complete fusion gives, and the slow member's event is then late."""

from __future__ import annotations

import random
from typing import Any

import orjson

from worker.config import Config, build_config
from worker.engine import Engine, InRecord
from worker.fusion import Fuser

MODELS = ["fast-a", "fast-b", "slow"]
LABELS = ["negative", "neutral", "positive"]


def config(early: bool) -> Config:
    return build_config(
        {
            "join": {"timeout_ms": 10_000, "early_decision": early},
            "fusion": {"strategy": "soft_vote", "labels": LABELS},
            "models": [
                {"name": "fast-a", "weight": 0.4},
                {"name": "fast-b", "weight": 0.4},
                {"name": "slow", "weight": 0.2},
            ],
        }
    )


def stream(n: int, seed: int) -> list[InRecord]:
    """n requests; the slow model's event comes 300 ms after the two fast ones."""
    rng = random.Random(seed)
    rows: list[tuple[int, bytes]] = []
    for i in range(n):
        start = 1_700_000_000_000 + i * 10
        for model, delay in (("fast-a", 0), ("fast-b", 5), ("slow", 300)):
            raw = [rng.random() ** 3 for _ in LABELS]
            probs = [x / sum(raw) for x in raw]
            event = {"request_id": f"r{i}", "model": model, "ts": start + delay, "probs": probs}
            rows.append((start + delay, orjson.dumps(event)))
    rows.sort(key=lambda r: r[0])
    return [InRecord("in", 0, i, None, value) for i, (_, value) in enumerate(rows)]


def fuse(cfg: Config, records: list[InRecord]) -> dict[str, dict[str, Any]]:
    engine = Engine(cfg, Fuser(cfg), event_time=True, encode=False)
    step = engine.step(records, 0)
    results = [*step.results, *engine.finish().results]
    return {r["request_id"]: r for r in results}


def test_decided_requests_keep_the_complete_fusions_label() -> None:
    """With early decision some requests close before the slow member reports, each as
    ``decided`` naming it missing, with the label the complete fusion gives; the others
    are complete with the same values as without early decision."""
    records = stream(500, seed=5)
    early = fuse(config(early=True), records)
    full = fuse(config(early=False), records)
    assert early.keys() == full.keys()
    decided = [r for r in early.values() if r["status"] == "decided"]
    assert 0 < len(decided) < len(early)
    for r in early.values():
        want = full[r["request_id"]]
        assert want["status"] == "complete"
        assert r["label"] == want["label"]
        if r["status"] == "decided":
            assert r["missing"] == ["slow"]
        else:
            assert r == want


def test_the_slow_members_event_after_a_decision_is_late() -> None:
    """A decided request is fused once: its slow member's event counts as late."""
    records = stream(200, seed=6)
    cfg = config(early=True)
    engine = Engine(cfg, Fuser(cfg), event_time=True, encode=False)
    step = engine.step(records, 0)
    decided = sum(1 for r in step.results if r["status"] == "decided")
    assert decided > 0
    assert step.other[("slow", "late")] == decided
