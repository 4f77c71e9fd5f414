"""The Fuser on the text task: the registry's text strategies over finished requests give
the text results of schemas/fused.v1.json, with the numbers of worker.fusion.text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fusion.factories import MODELS, finished, make_config
from worker.config import Config
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.fusion.text import TextOptions, fuse_text_batch, text_normalisation

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "fused.v1.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TEXTS = {
    "bert": "The cat sat on the mat.",
    "roberta": "The cat sat on a mat",
    "distil": "A dog barked.",
}


def text_config(strategy: str = "consensus", **fusion: Any) -> Config:
    return make_config(labels=(), task="text", strategy=strategy, min_models=2, **fusion)


def event(rid: str, model: str, text: str, confidence: float | None = None) -> PredictionEvent:
    return PredictionEvent(rid, model, 5, text=text, confidence=confidence, model_version="v2")


def requests() -> list[FinishedRequest]:
    """complete (one confidence sent), partial, insufficient (one member, min_models 2)."""
    complete = {m: event("c", m, t, 0.9 if m == "bert" else None) for m, t in TEXTS.items()}
    partial = {m: event("p", m, TEXTS[m]) for m in ("bert", "distil")}
    return [
        finished("c", complete),
        finished("p", partial),
        finished("i", {"roberta": event("i", "roberta", "Hello")}),
    ]


@pytest.mark.parametrize("strategy", ["text_vote", "consensus"])
def test_text_results_validate_for_every_status(strategy: str) -> None:
    """complete, partial and insufficient text results validate against fused.v1.json
    and survive a JSON round trip unchanged."""
    results = Fuser(text_config(strategy)).fuse(requests())
    assert [r["status"] for r in results] == ["complete", "partial", "insufficient"]
    for result in results:
        VALIDATOR.validate(result)
        assert orjson.loads(orjson.dumps(result)) == result


def test_a_text_result_names_the_chosen_member_and_each_similarity() -> None:
    """consensus picks the text closest to the others; each member shows its text, its
    renormalised weight, its similarity to the fused text, and its confidence if sent."""
    (result,) = Fuser(text_config()).fuse(requests()[:1])
    assert result["chosen"] == "bert"
    assert result["text"] == TEXTS["bert"]
    members = result["members"]
    assert members["bert"] == {
        "weight": pytest.approx(0.3),
        "text": TEXTS["bert"],
        "similarity": 1.0,
        "confidence": 0.9,
    }
    assert 0 < members["distil"]["similarity"] < members["roberta"]["similarity"] < 1
    assert result["model_versions"] == dict.fromkeys(MODELS, "v2")
    assert "label" not in result


def test_an_insufficient_text_result_has_no_text() -> None:
    """Fewer than min_models: no text, no chosen member, no agreement; members show
    their texts without a similarity."""
    result = Fuser(text_config()).fuse(requests())[2]
    assert (result["text"], result["chosen"], result["agreement"]) == (None, None, None)
    assert result["members"] == {"roberta": {"weight": 1.0, "text": "Hello"}}


def test_a_confidence_does_not_weigh() -> None:
    """A member's confidence is shown but leaves the result unchanged (the rule in
    worker.fusion.fuser's doc)."""
    plain = {m: event("c", m, t) for m, t in TEXTS.items()}
    low = {m: event("c", m, t, 0.0 if m == "bert" else 1.0) for m, t in TEXTS.items()}
    fuser = Fuser(text_config())
    a, b = fuser.fuse([finished("c", plain), finished("c", low)])
    assert (a["text"], a["agreement"]) == (b["text"], b["agreement"])


def test_a_zero_weight_member_never_decides_alone() -> None:
    """Only members of weight 0 present: insufficient, as for labels."""
    cfg = make_config(
        weights=(0.0, 1.0, 1.0), labels=(), task="text", strategy="text_vote", min_models=1
    )
    (result,) = Fuser(cfg).fuse([finished("z", {"bert": event("z", "bert", "x")})])
    assert result["status"] == "insufficient"


SENTENCES = st.sampled_from(
    ["the cat sat", "The cat sat.", "a cat sat", "the dog ran", "cats sit", "The Cat Sat"]
)


@given(
    st.lists(
        st.lists(st.one_of(st.none(), SENTENCES), min_size=3, max_size=3), min_size=1, max_size=8
    ),
    st.sampled_from(["text_vote", "consensus"]),
    st.sampled_from(["chrf", "token_f1", "wer"]),
)
def test_the_fuser_gives_the_text_cores_answer(
    grid: list[list[str | None]], strategy: str, similarity: str
) -> None:
    """Property: on any requests (members missing at random), the Fuser's text, chosen
    member and agreement are fuse_text_batch's on the renormalised configured weights."""
    weights = (0.3, 0.4, 0.3)
    cfg = make_config(
        weights=weights, labels=(), task="text", strategy=strategy, similarity=similarity
    )
    reqs = [
        finished(
            f"r{i}",
            {m: event(f"r{i}", m, t) for m, t in zip(MODELS, row, strict=True) if t is not None},
        )
        for i, row in enumerate(grid)
        if any(t is not None for t in row)
    ]
    rows = [[r.members[m].text if m in r.members else None for m in MODELS] for r in reqs]
    options = TextOptions(text_normalisation(strategy, None), similarity)
    want = fuse_text_batch(rows, weights, strategy, options)
    got = Fuser(cfg).fuse(reqs)
    for result, expected in zip(got, want, strict=True):
        assert expected is not None
        assert result["text"] == expected.text
        assert result["chosen"] == MODELS[expected.chosen]
        assert result["agreement"] == pytest.approx(expected.agreement, abs=1e-12)
