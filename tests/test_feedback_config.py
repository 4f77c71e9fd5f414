"""The [feedback] section and ``[fusion] weights``: defaults, and bad values stop the
worker at start with a message naming the key and the value."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import build_config
from worker.errors import ConfigError

MODELS = [{"name": "a"}, {"name": "b"}, {"name": "c"}]


def cfg(fusion: dict[str, Any] | None = None, **feedback: Any) -> Any:
    return build_config(
        {
            "fusion": {"labels": ["x", "y"], **(fusion or {})},
            "feedback": feedback,
            "models": MODELS,
        }
    )


def test_defaults_are_static_weights_and_no_labels_topic() -> None:
    """Without the section the weights are static and no labels topic is read."""
    c = cfg()
    assert c.fusion.weights == "static"
    assert c.feedback.topic == ""
    assert (c.feedback.learning_rate, c.feedback.weight_floor) == (0.01, 0.02)


@pytest.mark.parametrize(
    ("fusion", "feedback", "key"),
    [
        ({}, {"topic": "predictions"}, "feedback.topic"),
        ({}, {"topic": "fused"}, "feedback.topic"),
        ({}, {"weight_floor": 0.34}, "feedback.weight_floor"),
        ({}, {"learning_rate": 0}, "feedback.learning_rate"),
        ({}, {"memory_ms": 0}, "feedback.memory_ms"),
        ({}, {"window": 0}, "feedback.window"),
        ({"weights": "learned"}, {}, "fusion.weights"),
        ({"weights": "adaptive", "strategy": "median"}, {}, "fusion.weights"),
    ],
)
def test_a_bad_value_names_its_key(
    fusion: dict[str, Any], feedback: dict[str, Any], key: str
) -> None:
    """Each bad value is refused with its key in the message."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg(fusion, **feedback)


def test_adaptive_weights_on_the_text_task_name_the_weights_key() -> None:
    """Text strategies do not learn weights: the message names fusion.weights, not the
    strategy, which is a valid text strategy."""
    text = {"task": "text", "labels": [], "strategy": "consensus", "weights": "adaptive"}
    with pytest.raises(ConfigError, match=r"fusion\.weights"):
        cfg(text)


def test_adaptive_weights_with_a_weighted_strategy_are_accepted() -> None:
    """soft_vote, hard_vote and weighted_average can adapt their weights."""
    for strategy in ("soft_vote", "hard_vote", "weighted_average", "geometric_mean"):
        assert cfg({"weights": "adaptive", "strategy": strategy}).fusion.weights == "adaptive"
