"""The join's pending state (the exactly-once changelog) carries text predictions."""

from __future__ import annotations

import orjson

from worker.events import PredictionEvent
from worker.join import JoinTable

MODELS = ("nllb", "opus", "m2m")


def test_a_text_pending_state_round_trips_through_json() -> None:
    """Text and confidence are exported, survive JSON and come back as sent (a member
    without a confidence comes back without one)."""
    t = JoinTable(MODELS, 100, 500, 1000)
    a = PredictionEvent("r", "nllb", 3, text="Le chat.", confidence=0.75, trace_id="t")
    b = PredictionEvent("r", "m2m", 4, text="  chat  ")
    t.add(a, 10)
    t.add(b, 11)
    state = orjson.loads(orjson.dumps(t.pending_state("r")))
    assert state["members"]["nllb"] == {
        "ts": 3,
        "text": "Le chat.",
        "confidence": 0.75,
        "trace_id": "t",
    }
    fresh = JoinTable(MODELS, 100, 500, 1000)
    fresh.restore(state)
    assert fresh.pending_state("r") == state
    fresh.add(PredictionEvent("r", "opus", 5, text="Chat"), 20)
    [done] = fresh.drain()
    assert done.members["nllb"] == a
    assert done.members["m2m"] == b
