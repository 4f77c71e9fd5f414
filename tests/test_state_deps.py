"""What a saved pending state depends on, and its realignment to a changed
configuration (worker/state_deps.py), down to the fused result."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.config import Config, build_config
from worker.engine import Engine, InRecord
from worker.errors import ConfigError
from worker.fusion import Fuser
from worker.state_deps import StateMismatch, describe, realign

LABELS = ["negative", "neutral", "positive"]
MODELS = ["a", "b", "c"]


def config(
    labels: list[str] = LABELS, models: list[str] = MODELS, strategy: str = "soft_vote"
) -> Config:
    return build_config(
        {
            "join": {"timeout_ms": 1000},
            "fusion": {"strategy": strategy, "labels": labels},
            "models": [{"name": m} for m in models],
        }
    )


def saved_state(cfg: Config, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A pending state exported by a join table under ``cfg`` (through the engine)."""
    engine = Engine(cfg, Fuser(cfg))
    engine.open(0)
    records = [
        InRecord("in", 0, i, b"r", orjson.dumps({"request_id": "r", "model": m, "ts": 1, **f}))
        for i, (m, f) in enumerate(members.items())
    ]
    engine.step(records, now_ms=10)
    state = engine.tables[0].pending_state("r")
    assert state is not None
    return orjson.loads(orjson.dumps(state))


def test_a_pending_state_names_what_it_depends_on() -> None:
    """The exported state carries the labels, models, strategy and task it was saved under."""
    cfg = config()
    state = saved_state(cfg, {"a": {"probs": [0.1, 0.2, 0.7]}})
    assert state["deps"] == {
        "labels": LABELS,
        "models": MODELS,
        "strategy": "soft_vote",
        "task": "classification",
    }


def test_an_unchanged_configuration_restores_the_state_as_it_is() -> None:
    """Same dependencies: the very same state."""
    cfg = config()
    state = saved_state(cfg, {"a": {"probs": [0.1, 0.2, 0.7]}})
    assert realign(state, describe(cfg)) is state


def test_a_state_without_dependencies_is_taken_as_written_under_the_current_config() -> None:
    """States saved before dependencies were recorded restore as before."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    del state["deps"]
    assert realign(state, describe(config(labels=["x", "y"]))) is state


def test_reordered_labels_move_probs_and_label_indices_by_name() -> None:
    """Labels in another order: each probability and hard label keeps its label name."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}, "b": {"label": "negative"}})
    new = ["positive", "negative", "neutral"]
    out = realign(state, describe(config(labels=new)))
    assert out is not None
    assert out["members"]["a"]["probs"] == [0.7, 0.1, 0.2]
    assert out["members"]["b"]["label"] == new.index("negative")
    assert out["deps"]["labels"] == new


def test_an_added_label_gets_probability_zero() -> None:
    """A label the members did not predict is 0 in their realigned probabilities."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    out = realign(state, describe(config(labels=["neutral", "mixed", *LABELS[::2]])))
    assert out is not None
    assert out["members"]["a"]["probs"] == [0.2, 0.0, 0.1, 0.7]


def test_a_removed_model_drops_its_member() -> None:
    """A model no longer configured loses its member; the others stay."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}, "b": {"label": "neutral"}})
    out = realign(state, describe(config(models=["b", "c"])))
    assert out is not None
    assert list(out["members"]) == ["b"]


def test_a_request_left_without_members_is_dropped() -> None:
    """When none of a request's models is configured any more, nothing is restored."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    assert realign(state, describe(config(models=["b", "c"]))) is None


def test_another_strategy_for_the_same_task_restores_the_members() -> None:
    """The state holds predictions only: a new strategy of the task fuses them."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    out = realign(state, describe(config(strategy="hard_vote")))
    assert out is not None
    assert out["members"] == state["members"]


def test_a_removed_label_is_refused_naming_it() -> None:
    """Probabilities of a label no longer configured cannot be realigned: a ConfigError
    (exit 2) naming the label and the key."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    with pytest.raises(StateMismatch, match=r"\['neutral'\]") as info:
        realign(state, describe(config(labels=["negative", "positive"])))
    assert isinstance(info.value, ConfigError)
    assert info.value.key == "fusion.labels"


def test_another_task_is_refused() -> None:
    """Class probabilities cannot become scores: refused, naming both tasks."""
    state = saved_state(config(), {"a": {"probs": [0.1, 0.2, 0.7]}})
    scores = describe(config(labels=[], strategy="weighted_average"))
    with pytest.raises(StateMismatch, match=r"classification.*regression"):
        realign(state, scores)


def test_a_realigned_state_fuses_as_the_original_would_by_label_name() -> None:
    """Restored under reordered labels and completed, a request's fused probabilities
    per label name equal those of the original configuration."""
    members = {"a": {"probs": [0.1, 0.2, 0.7]}, "b": {"probs": [0.5, 0.3, 0.2]}}
    last = {"c": {"probs": [0.2, 0.2, 0.6]}}
    results = {}
    for labels in (LABELS, LABELS[::-1]):
        cfg = config(labels=labels)
        state = realign(saved_state(config(), members), describe(cfg))
        assert state is not None
        engine = Engine(cfg, Fuser(cfg))
        engine.open(0).restore(state)
        by_name = dict(zip(LABELS, last["c"]["probs"], strict=True))
        value = {"request_id": "r", "model": "c", "ts": 2, "probs": [by_name[n] for n in labels]}
        step = engine.step([InRecord("in", 0, 9, b"r", orjson.dumps(value))], now_ms=20)
        [result] = step.results
        results[tuple(labels)] = dict(zip(result["labels"], result["probs"], strict=True))
    original, reordered = results.values()
    assert reordered == pytest.approx(original, abs=1e-12)
