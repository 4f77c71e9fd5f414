"""The worked examples of the fusion article, reproduced exactly."""

from __future__ import annotations

import pytest

from tests.fusion.factories import finished, make_config
from worker.events import PredictionEvent
from worker.fusion import Fuser

MEMBER_PROBS = {
    "bert": (0.1, 0.2, 0.7),
    "roberta": (0.2, 0.3, 0.5),
    "distil": (0.3, 0.4, 0.3),
}


@pytest.mark.parametrize("strategy", ["weighted_average", "soft_vote"])
def test_weighted_average_of_three_members(strategy: str) -> None:
    """[0.1,0.2,0.7], [0.2,0.3,0.5], [0.3,0.4,0.3] with weights 0.3/0.4/0.3 fuse to
    [0.2, 0.3, 0.5], label "positive"."""
    request = finished(
        "r", {m: PredictionEvent("r", m, 1, probs=p) for m, p in MEMBER_PROBS.items()}
    )
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), strategy).fuse([request])
    assert result["probs"] == pytest.approx([0.2, 0.3, 0.5], abs=1e-12)
    assert result["label"] == "positive"
    assert result["confidence"] == pytest.approx(0.5, abs=1e-12)
    assert result["status"] == "complete"


def test_hard_vote_of_three_models_over_three_requests() -> None:
    """Model i's labels per request ['A','B','C'], ['A','B','A'], ['B','B','C'] give
    ['A','B','C'] by majority."""
    config = make_config((1.0, 1.0, 1.0), labels=("A", "B", "C"), strategy="hard_vote")
    per_model = {"bert": "ABC", "roberta": "ABA", "distil": "BBC"}
    index = {"A": 0, "B": 1, "C": 2}
    requests = [
        finished(
            f"r{i}",
            {m: PredictionEvent(f"r{i}", m, 1, label=index[s[i]]) for m, s in per_model.items()},
        )
        for i in range(3)
    ]
    assert [r["label"] for r in Fuser(config).fuse(requests)] == ["A", "B", "C"]
