"""The decoder under the text task (``[fusion] task = "text"``): text and confidence in,
the text reasons out, and a prediction kind that does not fit the task refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.config import build_config
from worker.decode import Decoder
from worker.errors import InvalidEvent
from worker.events import PredictionEvent


def text_decoder(**fusion: Any) -> Decoder:
    return Decoder(
        build_config(
            {
                "fusion": {"task": "text", "strategy": "consensus", **fusion},
                "models": [{"name": "nllb"}, {"name": "opus"}],
            }
        )
    )


TEXT = text_decoder(max_text_chars=20, normalise=["nfkc", "punctuation", "whitespace"])


def decode(doc: dict[str, Any], decoder: Decoder = TEXT) -> PredictionEvent:
    return decoder.decode(orjson.dumps({"request_id": "r1", "model": "nllb", **doc}), 7)


def reason(doc: dict[str, Any], decoder: Decoder = TEXT) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode(doc, decoder)
    return info.value.reason


def test_a_text_is_kept_as_sent() -> None:
    """The event carries the text as sent (not normalised) and no other prediction."""
    ev = decode({"text": "  Le chat.  "})
    assert (ev.text, ev.confidence) == ("  Le chat.  ", None)
    assert (ev.probs, ev.label, ev.score) == (None, None, None)


def test_a_confidence_is_kept_as_a_float() -> None:
    """confidence 1 (an integer on the wire) becomes the float 1.0."""
    ev = decode({"text": "Paris", "confidence": 1})
    assert ev.confidence == 1.0
    assert type(ev.confidence) is float


REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("text not a string", {"text": 42}, "text_type"),
    ("text over max_text_chars", {"text": "x" * 21}, "text_too_long"),
    ("text empty", {"text": ""}, "text_empty"),
    ("only punctuation, removed by the config", {"text": "?!."}, "text_empty"),
    ("confidence above 1", {"text": "a", "confidence": 1.01}, "schema"),
    ("confidence without text", {"label": "a", "confidence": 0.5}, "schema"),
    ("text and a score", {"text": "a", "score": 1.0}, "schema"),
    ("probs under the text task", {"probs": [0.5, 0.5]}, "label_mismatch"),
    ("label under the text task", {"label": "a"}, "label_mismatch"),
    ("score under the text task", {"score": 0.5}, "label_mismatch"),
]
REASONS_SEEN = {want for _, _, want in REJECTED}


@pytest.mark.parametrize(("doc", "want"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_each_broken_text_rule_has_its_reason(doc: dict[str, Any], want: str) -> None:
    """Every text rule rejects with its own stable reason code."""
    assert reason(doc) == want


def test_an_unknown_model_comes_before_the_text_checks() -> None:
    """A model that is not configured is unknown_model even with a text too long."""
    assert reason({"model": "gpt-9", "text": "x" * 30}) == "unknown_model"


@pytest.mark.parametrize("labels", [[], ["a", "b"]], ids=["regression", "classification"])
def test_a_text_under_another_task_is_a_label_mismatch(labels: list[str]) -> None:
    """text sent to a worker configured for labels or scores: label_mismatch."""
    strategy = "soft_vote" if labels else "weighted_average"
    cfg = build_config(
        {"fusion": {"labels": labels, "strategy": strategy}, "models": [{"name": "nllb"}]}
    )
    assert reason({"text": "Paris"}, Decoder(cfg)) == "label_mismatch"


def test_the_strategys_default_normalisation_decides_emptiness() -> None:
    """Without [fusion] normalise, text_vote removes punctuation (its default) and so
    finds "..." empty; consensus keeps punctuation and accepts it."""
    assert reason({"text": "..."}, text_decoder(strategy="text_vote")) == "text_empty"
    assert decode({"text": "..."}, text_decoder(strategy="consensus")).text == "..."
