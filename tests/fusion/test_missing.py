"""Missing members: renormalised weights, status partial/insufficient, stacking fallback."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from tests.fusion.factories import finished, make_config
from worker.config import Config
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.fusion.artefact import stacking_document, write_artefact

P = {"bert": (0.1, 0.2, 0.7), "roberta": (0.2, 0.3, 0.5), "distil": (0.3, 0.4, 0.3)}
ALL = ("bert", "roberta", "distil")


def _request(models: tuple[str, ...], request_id: str = "r") -> FinishedRequest:
    return finished(request_id, {m: PredictionEvent(request_id, m, 1, probs=P[m]) for m in models})


def test_missing_member_renormalises_weights() -> None:
    """Without distil, bert and roberta weigh 0.3/0.7 and 0.4/0.7; the status is partial
    and distil is listed as missing."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote").fuse(
        [_request(("bert", "roberta"))]
    )
    expected = (0.3 * np.array(P["bert"]) + 0.4 * np.array(P["roberta"])) / 0.7
    assert result["status"] == "partial"
    assert result["missing"] == ["distil"]
    assert result["probs"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert result["members"]["bert"]["weight"] == pytest.approx(3 / 7, abs=1e-15)
    assert result["members"]["roberta"]["weight"] == pytest.approx(4 / 7, abs=1e-15)
    assert set(result["members"]) == {"bert", "roberta"}


def test_fewer_than_min_models_is_insufficient() -> None:
    """One member with min_models = 2: status insufficient, no label/probs/labels/
    confidence/agreement, the member still listed."""
    (result,) = Fuser(make_config(min_models=2), "soft_vote").fuse([_request(("roberta",))])
    assert result["status"] == "insufficient"
    for key in ("label", "probs", "labels", "confidence", "agreement"):
        assert result[key] is None
    assert list(result["members"]) == ["roberta"]
    assert result["missing"] == ["bert", "distil"]


def test_min_models_reached_is_partial() -> None:
    """Two of three members with min_models = 2 are fused (partial); bert (positive) and
    distil (neutral) tie at 0.3 each, so the lower label index, neutral, wins."""
    (result,) = Fuser(make_config(min_models=2), "hard_vote").fuse([_request(("bert", "distil"))])
    assert result["status"] == "partial"
    assert result["label"] == "neutral"
    assert result["probs"] == [0.0, 0.5, 0.5]


def test_only_zero_weight_members_is_insufficient() -> None:
    """A weight-0 member alone does not decide a weighted strategy: insufficient."""
    (result,) = Fuser(make_config((0.0, 1.0, 1.0)), "soft_vote").fuse([_request(("bert",))])
    assert result["status"] == "insufficient"
    assert result["members"]["bert"]["weight"] == 0.0


def test_unweighted_strategy_counts_zero_weight_members() -> None:
    """median is unweighted: a weight-0 member alone still gives a prediction."""
    (result,) = Fuser(make_config((0.0, 1.0, 1.0)), "median").fuse([_request(("bert",))])
    assert result["status"] == "partial"
    assert result["probs"] == pytest.approx(list(P["bert"]))


def test_all_members_present_is_complete_even_after_the_deadline() -> None:
    """Status follows who reported: every model present is complete, expired or not."""
    expired = msgspec.structs.replace(_request(ALL), expired=True)
    (result,) = Fuser(make_config(), "soft_vote").fuse([expired])
    assert result["status"] == "complete"
    assert result["missing"] == []


def _stacking_config(tmp_path: Path, fallback: str = "soft_vote", min_models: int = 1) -> Config:
    labels = ("negative", "neutral", "positive")
    path = tmp_path / "stacker.json"
    coef = np.tile(np.eye(3), 3)  # each label's decision sums that label over the members
    write_artefact(path, stacking_document(ALL, labels, coef, np.zeros(3), {}))
    return make_config(
        strategy="stacking", stacker=str(path), fallback=fallback, min_models=min_models
    )


def test_stacking_falls_back_when_a_member_is_missing(tmp_path: Path) -> None:
    """A request without distil is fused by the fallback (soft_vote) and says so; a
    complete one is stacked and has no fallback key."""
    config = _stacking_config(tmp_path)
    partial, complete = Fuser(config).fuse([_request(("bert", "roberta"), "a"), _request(ALL, "b")])
    (soft,) = Fuser(config, "soft_vote").fuse([_request(("bert", "roberta"), "a")])
    assert partial["strategy"] == "stacking"
    assert partial["fallback"] == "soft_vote"
    assert partial["status"] == "partial"
    assert partial["probs"] == soft["probs"]
    assert "fallback" not in complete
    assert complete["status"] == "complete"


def test_stacking_fallback_uses_the_configured_strategy(tmp_path: Path) -> None:
    """The fallback strategy comes from [fusion] fallback (here median), weights included."""
    config = _stacking_config(tmp_path, fallback="median")
    (result,) = Fuser(config).fuse([_request(("bert", "roberta"))])
    (median,) = Fuser(config, "median").fuse([_request(("bert", "roberta"))])
    assert result["fallback"] == "median"
    assert result["probs"] == median["probs"]
    assert result["members"] == median["members"]


def test_stacking_below_min_models_is_insufficient_without_fallback(tmp_path: Path) -> None:
    """A stacking request below min_models is insufficient and claims no fallback."""
    config = _stacking_config(tmp_path, min_models=2)
    (result,) = Fuser(config).fuse([_request(("bert",))])
    assert result["status"] == "insufficient"
    assert "fallback" not in result
