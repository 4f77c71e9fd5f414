"""Fuser and the batch form: what each result says about its request and members."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fusion.factories import finished, make_config
from worker.errors import ConfigError, FusionError
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser, build_batch

PROBS = {"bert": (0.1, 0.2, 0.7), "roberta": (0.2, 0.3, 0.5), "distil": (0.3, 0.4, 0.3)}


def _full(request_id: str = "r") -> FinishedRequest:
    return finished(
        request_id, {m: PredictionEvent(request_id, m, 1, probs=p) for m, p in PROBS.items()}
    )


def test_build_batch_shapes_and_presence() -> None:
    """build_batch gives probs (n, m, k) in configured order, zeros and False where missing,
    a one-hot row for a label-only member."""
    request = finished(
        "r",
        {
            "distil": PredictionEvent("r", "distil", 1, label=2),
            "bert": PredictionEvent("r", "bert", 1, probs=(0.6, 0.3, 0.1)),
        },
    )
    batch = build_batch([request], ("bert", "roberta", "distil"), 3)
    np.testing.assert_array_equal(batch.probs[0], [[0.6, 0.3, 0.1], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(batch.present, [[True, False, True]])
    np.testing.assert_array_equal(batch.member_labels, [[0, -1, 2]])


def test_label_only_member_is_a_one_hot_vote() -> None:
    """A member that sent only a label weighs in soft_vote as a one-hot distribution, and
    its member entry has a label but no probs."""
    request = finished(
        "r",
        {
            "bert": PredictionEvent("r", "bert", 1, probs=(0.1, 0.2, 0.7)),
            "roberta": PredictionEvent("r", "roberta", 1, label=0),
        },
    )
    (result,) = Fuser(make_config((1.0, 1.0, 1.0)), "soft_vote").fuse([request])
    assert result["probs"] == pytest.approx([0.55, 0.1, 0.35])
    assert result["members"]["roberta"] == {
        "weight": 0.5,
        "label": "negative",
        "contribution": 0.5,
    }
    assert result["members"]["bert"]["probs"] == [0.1, 0.2, 0.7]


def test_hard_vote_counts_the_argmax_of_probabilities() -> None:
    """In hard_vote a member that sent probabilities votes its argmax, with its weight;
    probs are the normalised vote shares."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "hard_vote").fuse([_full()])
    assert result["label"] == "positive"
    assert result["probs"] == pytest.approx([0.0, 0.3, 0.7])


def test_agreement_is_the_weight_share_of_the_fused_label() -> None:
    """agreement: bert and roberta (0.3 + 0.4) say positive, as the fused label."""
    (result,) = Fuser(make_config((0.3, 0.4, 0.3)), "soft_vote").fuse([_full()])
    assert result["agreement"] == pytest.approx(0.7)
    assert result["members"]["distil"]["label"] == "neutral"


def test_results_keep_the_input_order() -> None:
    """One result per request, in input order; an empty batch gives no results."""
    fuser = Fuser(make_config(), "median")
    ids = ["z", "a", "m", "b"]
    assert [r["request_id"] for r in fuser.fuse([_full(i) for i in ids])] == ids
    assert fuser.fuse([]) == []


def test_times_versions_and_trace_id() -> None:
    """first_ts, fused_ts, latency_ms (fused_ts - opened_ms), model_versions of
    the members that sent one, trace_id of the first member to arrive that has one."""
    request = FinishedRequest(
        "r",
        {
            "roberta": PredictionEvent("r", "roberta", 100, probs=PROBS["roberta"]),
            "distil": PredictionEvent("r", "distil", 105, probs=PROBS["distil"], trace_id="t2"),
            "bert": PredictionEvent("r", "bert", 110, probs=PROBS["bert"], model_version="v9"),
        },
        first_ts=100,
        opened_ms=5_000,
        fused_ts=5_042,
        expired=False,
    )
    (result,) = Fuser(make_config()).fuse([request])
    assert (result["first_ts"], result["fused_ts"], result["latency_ms"]) == (100, 5_042, 42)
    assert result["model_versions"] == {"bert": "v9"}
    assert result["trace_id"] == "t2"
    assert list(result["members"]) == ["bert", "roberta", "distil"]  # configured order


def test_strategy_argument_overrides_the_config() -> None:
    """Fuser(config, strategy) uses that strategy and names it in each result."""
    (result,) = Fuser(make_config(strategy="soft_vote"), "hard_vote").fuse([_full()])
    assert result["strategy"] == "hard_vote"


@pytest.mark.parametrize(
    ("labels", "strategy", "message"),
    [
        (("a", "b"), "mean", "must be one of"),
        ((), "soft_vote", "needs fusion.labels"),
        ((), "stacking", "needs fusion.labels"),
    ],
)
def test_unusable_strategy_is_a_config_error(
    labels: tuple[str, ...], strategy: str, message: str
) -> None:
    """An unknown strategy, or a classification strategy for scores, is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        Fuser(make_config(labels=labels), strategy)


def test_regression_members_report_scores() -> None:
    """For scores: score is the weighted mean, members carry weight and score, confidence
    and agreement are null."""
    config = make_config((1.0, 3.0, 0.0), labels=())
    events = {"bert": 2.0, "roberta": 6.0, "distil": 100.0}
    request = finished("r", {m: PredictionEvent("r", m, 1, score=s) for m, s in events.items()})
    (result,) = Fuser(config).fuse([request])
    assert result["score"] == pytest.approx(5.0)
    assert result["members"]["roberta"] == {"weight": 0.75, "score": 6.0}
    assert result["confidence"] is None
    assert result["agreement"] is None
    assert "label" not in result


def test_wrong_prediction_kind_is_refused() -> None:
    """A score member in a classification batch (an undecoded event) raises FusionError
    naming the request and the model."""
    request = finished("r9", {"bert": PredictionEvent("r9", "bert", 1, score=1.0)})
    with pytest.raises(FusionError, match="request 'r9': member 'bert'"):
        Fuser(make_config()).fuse([request])
