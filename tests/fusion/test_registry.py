"""The strategy registry: one table that config validation, the Fuser, replay and the
backtest read; a strategy's task decides where it is valid."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from tests.fusion.factories import MODELS, make_config, probs_requests, score_requests
from worker.backtest.run import default_strategies
from worker.config import Config
from worker.errors import ConfigError
from worker.fusion import Fuser, registry
from worker.fusion.registry import STRATEGIES, Strategy, Task
from worker.replay import make_fuser

TASKS: tuple[Task, ...] = ("classification", "regression", "text")
PAIRS = [(name, task) for name in STRATEGIES for task in TASKS]


def test_the_table_declares_the_documented_tasks() -> None:
    """Votes, log-linear pooling and stacking need labels; the means and order
    statistics serve scores too; only the order statistics ignore the weights; the
    text strategies serve the text task only."""
    declared = {n: (set(s.tasks), s.weighted, s.needs_stacker) for n, s in STRATEGIES.items()}
    both, cls = {"classification", "regression"}, {"classification"}
    assert declared == {
        "weighted_average": (both, True, False),
        "soft_vote": (cls, True, False),
        "hard_vote": (cls, True, False),
        "geometric_mean": (cls, True, False),
        "median": (both, False, False),
        "trimmed_mean": (both, False, False),
        "stacking": (cls, True, True),
        "text_vote": ({"text"}, True, False),
        "consensus": ({"text"}, True, False),
    }


def _labels(task: Task) -> tuple[str, ...]:
    return ("negative", "neutral", "positive") if task == "classification" else ()


def _config(task: Task, **fusion: Any) -> Config:
    """A valid config of ``task`` (the text task names itself and a text strategy)."""
    if task == "text":
        fusion.setdefault("strategy", "consensus")
        return make_config(labels=(), task="text", **fusion)
    return make_config(labels=_labels(task), **fusion)


@pytest.mark.parametrize(("name", "task"), [p for p in PAIRS if p[1] in STRATEGIES[p[0]].tasks])
def test_every_strategy_validates_for_its_tasks(name: str, task: Task, tmp_path: Path) -> None:
    """Each registered strategy is accepted by the config for every task it declares
    (a strategy that needs a stacker, given a stacker file)."""
    stacker = tmp_path / "stacker.json"
    stacker.write_text("{}")
    extra = {"stacker": str(stacker)} if STRATEGIES[name].needs_stacker else {}
    cfg = _config(task, strategy=name, **extra)
    assert cfg.fusion.strategy == name


@pytest.mark.parametrize(("name", "task"), [p for p in PAIRS if p[1] not in STRATEGIES[p[0]].tasks])
def test_a_strategy_is_refused_outside_its_tasks(name: str, task: Task) -> None:
    """A strategy outside its declared tasks is a ConfigError on fusion.strategy, for the
    config, the Fuser and replay's --strategy alike."""
    with pytest.raises(ConfigError) as info:
        _config(task, strategy=name)
    assert (info.value.key, info.value.value) == ("fusion.strategy", name)
    valid = _config(task)
    with pytest.raises(ConfigError, match=r"fusion\.strategy"):
        Fuser(valid, name)
    with pytest.raises(ConfigError) as info:
        make_fuser(valid, [name])
    assert (info.value.key, info.value.value) == ("--strategy", name)


def test_an_unknown_name_lists_every_strategy() -> None:
    """An unknown name is refused with the registry's names in the message."""
    with pytest.raises(ConfigError) as info:
        make_config(strategy="mean")
    assert all(name in info.value.problem for name in STRATEGIES)


@pytest.mark.parametrize("task", TASKS)
def test_backtest_defaults_are_the_task_strategies_without_a_stacker(task: Task) -> None:
    """The backtest runs, by default, every strategy of the task but those needing a
    stacker, in table order."""
    expected = [s.name for s in STRATEGIES.values() if task in s.tasks and not s.needs_stacker]
    assert default_strategies(_config(task)) == expected
    assert "stacking" not in expected


def test_the_fallback_must_need_no_stacker() -> None:
    """fusion.fallback is any classification strategy of the table that needs no
    stacker."""
    for name, strategy in STRATEGIES.items():
        if strategy.needs_stacker or "classification" not in strategy.tasks:
            with pytest.raises(ConfigError, match=r"fusion\.fallback"):
                make_config(fallback=name)
        else:
            assert make_config(fallback=name).fusion.fallback == name


def test_a_new_entry_is_valid_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a strategy is one entry: config, Fuser, replay and backtest accept it."""
    copy = Strategy("mean_copy", registry.BOTH, True, STRATEGIES["weighted_average"].function)
    monkeypatch.setattr(registry, "STRATEGIES", MappingProxyType({**STRATEGIES, copy.name: copy}))
    cfg = make_config(strategy="mean_copy")
    assert "mean_copy" in default_strategies(cfg)
    assert make_fuser(cfg, ["mean_copy", "soft_vote"]) is not None
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=(4, 3))
    requests = probs_requests(probs, None, MODELS)
    ours = Fuser(cfg).fuse(requests)
    reference = Fuser(cfg, "weighted_average").fuse(requests)
    assert [r["probs"] for r in ours] == [r["probs"] for r in reference]
    assert {r["strategy"] for r in ours} == {"mean_copy"}


@pytest.mark.parametrize("name", registry.names("regression"))
def test_unweighted_strategies_report_equal_weights(name: str) -> None:
    """The table's ``weighted`` flag decides the weights a result names: configured ones
    renormalised, or 1/c each for an order statistic."""
    cfg = make_config(weights=(0.2, 0.3, 0.5), labels=())
    scores = np.array([[1.0, 2.0, 4.0]])
    (result,) = Fuser(cfg, name).fuse(score_requests(scores, None, MODELS))
    weights = [result["members"][m]["weight"] for m in MODELS]
    if STRATEGIES[name].weighted:
        assert weights == pytest.approx([0.2, 0.3, 0.5])
    else:
        assert weights == pytest.approx([1 / 3] * 3)
