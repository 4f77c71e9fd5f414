"""Each member of a result carries its contribution to the fused label's score (weight x
its probability of the fused label, after calibration); and a Fuser's weights can be
replaced between batches (adaptive weights)."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest

from tests.fusion.factories import MODELS, finished, make_config
from tests.fusion.test_schema import VALIDATOR
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fused, Fuser
from worker.fusion.result import classification_results

PROBS = {"bert": (0.1, 0.2, 0.7), "roberta": (0.2, 0.3, 0.5), "distil": (0.6, 0.3, 0.1)}


def _request(models: tuple[str, ...] = MODELS) -> list[FinishedRequest]:
    return [finished("r", {m: PredictionEvent("r", m, 1, probs=PROBS[m]) for m in models})]


@pytest.mark.parametrize("strategy", ["weighted_average", "soft_vote"])
def test_contributions_are_weight_times_probability_and_add_up(strategy: str) -> None:
    """weight x p(fused label) per member; their sum is the fused label's probability."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), strategy).fuse(_request())
    assert result["label"] == "positive"
    members = result["members"]
    for name, member in members.items():
        assert member["contribution"] == pytest.approx(member["weight"] * PROBS[name][2])
    total = sum(member["contribution"] for member in members.values())
    assert total == pytest.approx(result["probs"][2], abs=1e-15)


def test_hard_vote_contribution_is_the_weight_of_a_vote_for_the_fused_label() -> None:
    """In hard_vote a member contributes its weight when it voted for the fused label,
    else 0; the sum is the fused label's vote share."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "hard_vote").fuse(_request())
    members = result["members"]
    assert result["label"] == "positive"
    assert members["distil"]["contribution"] == 0.0
    assert members["bert"]["contribution"] == members["bert"]["weight"]
    total = sum(member["contribution"] for member in members.values())
    assert total == pytest.approx(result["probs"][2], abs=1e-15)


def test_partial_request_contributions_use_the_renormalised_weights() -> None:
    """With a member missing, the contributions use the weights renormalised over the
    members present, and the missing member has none."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote").fuse(_request(("bert", "distil")))
    assert result["status"] == "partial"
    assert set(result["members"]) == {"bert", "distil"}
    assert result["label"] == "positive"
    assert result["members"]["bert"]["contribution"] == pytest.approx(0.5 * 0.7)
    assert result["members"]["distil"]["contribution"] == pytest.approx(0.5 * 0.1)


def test_insufficient_result_has_no_contribution() -> None:
    """Without a prediction there is no fused label to contribute to."""
    config = make_config((0.3, 0.4, 0.3), min_models=2)
    (result,) = Fuser(config, "soft_vote").fuse(_request(("bert",)))
    assert result["status"] == "insufficient"
    assert "contribution" not in result["members"]["bert"]
    VALIDATOR.validate(result)


def test_contribution_uses_the_probabilities_the_strategy_fused() -> None:
    """With ``scored_probs`` (the calibrated members) the contribution is computed from
    them, while the member entry still shows the probabilities it sent."""
    sent = np.array([[[0.1, 0.9], [0.6, 0.4]]])
    scored = np.array([[[0.3, 0.7], [0.5, 0.5]]])
    fused = Fused(
        np.array([[0.4, 0.6]]),
        np.array([1]),
        None,
        np.array([[0.5, 0.5]]),
        np.array([True]),
    )
    request = finished(
        "r",
        {
            "a": PredictionEvent("r", "a", 1, probs=(0.1, 0.9)),
            "b": PredictionEvent("r", "b", 1, probs=(0.6, 0.4)),
        },
    )
    (result,) = classification_results(
        [request],
        ("a", "b"),
        ("x", "y"),
        "soft_vote",
        fused,
        sent,
        np.array([[1, 0]]),
        scored_probs=scored,
    )
    assert result["members"]["a"] == {
        "weight": 0.5,
        "label": "y",
        "probs": [0.1, 0.9],
        "contribution": 0.35,
    }
    assert result["members"]["b"]["contribution"] == 0.25


def test_schema_refuses_a_negative_contribution() -> None:
    """The schema allows a contribution >= 0 on a classification member only."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote").fuse(_request())
    VALIDATOR.validate(result)
    result["members"]["bert"]["contribution"] = -0.1
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(result)


def test_schema_refuses_a_contribution_on_a_regression_member() -> None:
    """A regression member has a score, not a contribution to a label."""
    config = make_config((0.3, 0.4, 0.3), labels=())
    events = {m: PredictionEvent("r", m, 1, score=1.0) for m in MODELS}
    (result,) = Fuser(config).fuse([finished("r", events)])
    VALIDATOR.validate(result)
    result["members"]["bert"]["contribution"] = 0.3
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(result)


def test_a_member_sending_slightly_more_than_one_still_validates() -> None:
    """Probabilities summing to 1 within the tolerance can give a contribution above 1."""
    events = {"bert": PredictionEvent("r", "bert", 1, probs=(1.0005, 0.0, 0.0))}
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote").fuse([finished("r", events)])
    assert result["members"]["bert"]["contribution"] > 1.0
    VALIDATOR.validate(result)


def test_set_weights_changes_the_weights_of_later_batches() -> None:
    """After set_weights the Fuser fuses with the new weights and the results name them."""
    fuser = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote")
    fuser.set_weights(np.array([0.0, 0.0, 2.0]))
    (result,) = fuser.fuse(_request())
    assert result["label"] == "negative"
    assert result["probs"] == pytest.approx(list(PROBS["distil"]))
    assert [m["weight"] for m in result["members"].values()] == [0.0, 0.0, 1.0]
