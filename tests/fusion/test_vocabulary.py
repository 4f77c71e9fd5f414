"""Fusion with per-model label vocabularies: each label is weighed over the members that
cover it, a member that names no fused label abstains, full coverage changes nothing,
and every strategy equals a brute-force per-request reference on random coverage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import trim_mean

from tests.fusion.factories import finished, probs_requests
from worker.config import Config, build_config
from worker.errors import ConfigError
from worker.events import PredictionEvent
from worker.fusion import Fuser

Array = np.ndarray[Any, Any]
TOL = 1e-12
LABELS = ("a", "b", "c")
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "fused.v1.json").read_text())


def config(models: list[dict[str, Any]], labels: tuple[str, ...] = LABELS, **fusion: Any) -> Config:
    return build_config({"models": models, "fusion": {"labels": list(labels), **fusion}})


def subset_config(**fusion: Any) -> Config:
    """x covers a and b only; y covers a, b and c."""
    return config(
        [
            {"name": "x", "weight": 1.0, "labels": ["a", "b"]},
            {"name": "y", "weight": 3.0, "labels": ["a", "b", "c"]},
        ],
        **fusion,
    )


def event(model: str, probs: tuple[float, ...] | None = None, label: int | None = None) -> Any:
    return PredictionEvent("r", model, 1, probs=probs, label=label)


def test_soft_vote_weighs_each_label_over_the_models_covering_it() -> None:
    """Label c is judged by y alone (x does not cover it): per label sum w p / sum w over
    the covering members, then the row renormalised."""
    members = {"x": event("x", (0.8, 0.2, 0.0)), "y": event("y", (0.1, 0.1, 0.8))}
    (result,) = Fuser(subset_config()).fuse([finished("r", members)])
    raw = np.array([(0.8 + 3 * 0.1) / 4, (0.2 + 3 * 0.1) / 4, 0.8])
    np.testing.assert_allclose(result["probs"], raw / raw.sum(), atol=TOL)
    assert result["label"] == "c"


def test_a_member_shows_null_for_the_labels_it_does_not_cover() -> None:
    """x's probs in the result are null at c, and the result validates against the schema."""
    members = {"x": event("x", (0.8, 0.2, 0.0)), "y": event("y", (0.1, 0.1, 0.8))}
    (result,) = Fuser(subset_config()).fuse([finished("r", members)])
    assert result["members"]["x"]["probs"] == [0.8, 0.2, None]
    assert result["members"]["y"]["probs"] == [0.1, 0.1, 0.8]
    jsonschema.Draft202012Validator(SCHEMA).validate(result)


def test_hard_vote_counts_a_vote_for_the_label_it_names() -> None:
    """Votes are not spread over coverage: x's vote for a (weight 1) loses to y's for c
    (weight 3), shares 1/4 and 3/4."""
    members = {"x": event("x", label=0), "y": event("y", label=2)}
    (result,) = Fuser(subset_config(), "hard_vote").fuse([finished("r", members)])
    assert result["label"] == "c"
    assert result["probs"] == [0.25, 0.0, 0.75]


def test_a_member_without_mass_on_the_fused_labels_abstains() -> None:
    """A label code mapping to no fused label (decoded as -1): weight 0, label null; the
    other member decides alone, with all the weight."""
    cfg = config(
        [
            {"name": "x", "labels": ["a", "b", "spam"]},
            {"name": "y", "labels": ["a", "b", "c"]},
        ]
    )
    members = {"x": event("x", label=-1), "y": event("y", (0.1, 0.2, 0.7))}
    (result,) = Fuser(cfg).fuse([finished("r", members)])
    assert result["members"]["x"] == {"weight": 0.0, "label": None}
    assert result["members"]["y"]["weight"] == 1.0
    assert result["probs"] == pytest.approx([0.1, 0.2, 0.7], abs=TOL)
    assert result["status"] == "complete"
    jsonschema.Draft202012Validator(SCHEMA).validate(result)


def test_only_abstaining_members_give_insufficient() -> None:
    """No member with mass on a fused label: no prediction (as with weight 0 everywhere)."""
    cfg = config([{"name": "x", "labels": ["a", "spam"]}, {"name": "y"}])
    members = {"x": event("x", probs=(0.0, 0.0, 0.0))}
    (result,) = Fuser(cfg).fuse([finished("r", members)])
    assert result["status"] == "insufficient"
    assert result["members"]["x"]["label"] is None


@pytest.mark.parametrize(
    "strategy", ["soft_vote", "hard_vote", "geometric_mean", "median", "trimmed_mean"]
)
def test_full_coverage_through_other_codes_equals_no_vocabulary(strategy: str) -> None:
    """Models that name every fused label with codes of their own (renamed, reordered)
    fuse to exactly the numbers of models without vocabularies."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=(20, 3))
    present = rng.random((20, 3)) < 0.8
    present[:, 0] = True
    plain = config([{"name": f"m{j}", "weight": 1.0 + j} for j in range(3)])
    renamed = config(
        [
            {
                "name": f"m{j}",
                "weight": 1.0 + j,
                "labels": ["C", "A", "B"],
                "label_map": {"A": "a", "B": "b", "C": "c"},
            }
            for j in range(3)
        ]
    )
    requests = probs_requests(probs, present, plain.model_names)
    assert Fuser(renamed, strategy).fuse(requests) == Fuser(plain, strategy).fuse(requests)


def test_stacking_refuses_partial_coverage_at_load(tmp_path: Path) -> None:
    """A stacker needs every member's probability of every label: a config error names
    the model that does not cover them all."""
    stacker = tmp_path / "stacker.json"
    stacker.write_text("{}")
    with pytest.raises(ConfigError) as err:
        subset_config(strategy="stacking", stacker=str(stacker))
    assert err.value.key == "fusion.strategy"
    assert "models[0] (x)" in str(err.value)


def test_a_stacking_fuser_refuses_partial_coverage() -> None:
    """replay's and the backtest's --strategy stacking meet the same refusal as the config."""
    with pytest.raises(ConfigError) as err:
        Fuser(subset_config(), "stacking")
    assert err.value.key == "fusion.strategy"


# -- random coverage against a brute-force reference ---------------------------------------


@st.composite
def covered_problems(draw: st.DrawFn) -> tuple[Array, Array, Array, list[float]]:
    """probs (n, m, k) on each model's covered labels (0 elsewhere), a coverage (m, k)
    with at least one label per model, a presence mask with one member per request,
    m weights."""
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 5))
    k = draw(st.integers(2, 4))
    cover = draw(arrays(np.bool_, (m, k)))
    cover[np.arange(m), draw(st.integers(0, k - 1))] = True
    raw = draw(
        arrays(
            np.float64, (n, m, k), elements=st.sampled_from([0.0, 0.1, 0.5, 1.0]) | st.floats(0, 1)
        )
    )
    raw = np.where(cover[None], raw, 0.0)
    empty = raw.sum(axis=2) == 0
    raw[empty] = cover[np.nonzero(empty)[1]]
    probs = raw / raw.sum(axis=2, keepdims=True)
    present = draw(arrays(np.bool_, (n, m)))
    present[np.arange(n), draw(st.integers(0, m - 1))] = True
    weights = draw(st.lists(st.floats(0.05, 10.0), min_size=m, max_size=m))
    return probs, cover, present, weights


def _fuse(problem: tuple[Array, Array, Array, list[float]], strategy: str) -> list[Any]:
    probs, cover, present, weights = problem
    labels = tuple(f"c{i}" for i in range(probs.shape[2]))
    models = [
        {
            "name": f"m{j}",
            "weight": w,
            "labels": [label for label, c in zip(labels, cover[j], strict=True) if c] + ["other"],
        }
        for j, w in enumerate(weights)
    ]
    cfg = config(models, labels=labels, geometric_floor=1e-3)
    return Fuser(cfg, strategy).fuse(probs_requests(probs, present, cfg.model_names))


def _per_label(problem: tuple[Array, Array, Array, list[float]], i: int) -> list[Array]:
    """For request i, the index of the present members covering each label."""
    _, cover, present, _ = problem
    return [np.flatnonzero(present[i] & cover[:, c]) for c in range(cover.shape[1])]


def _rows(pooled: Array, probs: Array, present: Array) -> Array:
    if pooled.sum() > 0:
        out: Array = pooled / pooled.sum()
        return out
    mean: Array = probs[present].sum(axis=0)
    return mean / mean.sum()


@given(covered_problems())
def test_soft_vote_equals_the_per_label_reference(
    problem: tuple[Array, Array, Array, list[float]],
) -> None:
    """Per label: sum_i w_i p_ik / sum_i w_i over the present members covering it; 0 when
    none does; renormalised."""
    probs, _, _, weights = problem
    w = np.array(weights)
    for i, result in enumerate(_fuse(problem, "soft_vote")):
        pooled = np.array(
            [
                np.average(probs[i, who, c], weights=w[who]) if len(who) else 0.0
                for c, who in enumerate(_per_label(problem, i))
            ]
        )
        np.testing.assert_allclose(result["probs"], pooled / pooled.sum(), atol=TOL)
        assert result["label"] == f"c{int(np.argmax(result['probs']))}"


@given(covered_problems())
def test_geometric_mean_equals_the_per_label_reference(
    problem: tuple[Array, Array, Array, list[float]],
) -> None:
    """Per label: the weighted mean of log max(p, floor) over the covering members; exp;
    a label nobody covers gets 0; renormalised."""
    probs, _, _, weights = problem
    w = np.array(weights)
    for i, result in enumerate(_fuse(problem, "geometric_mean")):
        pooled = np.array(
            [
                np.exp(np.average(np.log(np.maximum(probs[i, who, c], 1e-3)), weights=w[who]))
                if len(who)
                else 0.0
                for c, who in enumerate(_per_label(problem, i))
            ]
        )
        np.testing.assert_allclose(result["probs"], pooled / pooled.sum(), atol=TOL)


@given(covered_problems())
def test_median_and_trimmed_mean_equal_the_per_label_reference(
    problem: tuple[Array, Array, Array, list[float]],
) -> None:
    """Per label: np.median / scipy's trim_mean over the covering members; renormalised
    (the members' mean when every value is 0)."""
    probs, _, present, _ = problem
    medians = _fuse(problem, "median")
    trimmed = _fuse(problem, "trimmed_mean")
    for i in range(len(medians)):
        who = _per_label(problem, i)
        med = np.array([np.median(probs[i, x, c]) if len(x) else 0.0 for c, x in enumerate(who)])
        cut = np.array(
            [trim_mean(probs[i, x, c], 0.2) if len(x) else 0.0 for c, x in enumerate(who)]
        )
        np.testing.assert_allclose(medians[i]["probs"], _rows(med, probs[i], present[i]), atol=TOL)
        np.testing.assert_allclose(trimmed[i]["probs"], _rows(cut, probs[i], present[i]), atol=TOL)
