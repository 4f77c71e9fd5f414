"""PredictionEvent as the join holds it: one gc-free struct per prediction kind, built
from the one-class signature or, by the decoder and the restore, from its fields."""

from __future__ import annotations

import gc
import pickle
import sys

import orjson
import pytest

from worker.config import build_config
from worker.decode import Decoder
from worker.events import (
    FinishedRequest,
    LabelEvent,
    PredictionEvent,
    ProbsEvent,
    ScoreEvent,
    TextEvent,
    TracedLabelEvent,
    pack_probs,
)

KINDS = [
    ({"probs": (0.25, 0.75)}, ProbsEvent),
    ({"label": 1}, LabelEvent),
    ({"label": -1}, LabelEvent),
    ({"score": 0.0}, ScoreEvent),
    ({"text": "oui", "confidence": 0.5}, TextEvent),
    ({"text": ""}, TextEvent),
]


@pytest.mark.parametrize(("kind", "cls"), KINDS)
def test_the_base_class_builds_the_subclass_of_the_kind_given(
    kind: dict[str, object], cls: type[PredictionEvent]
) -> None:
    """PredictionEvent(..., kind=value) is the subclass of that kind; the others read None."""
    e = PredictionEvent("r", "m", 5, model_version="v", trace_id="t", **kind)
    assert type(e) is cls
    assert isinstance(e, PredictionEvent)
    assert (e.request_id, e.model, e.ts, e.model_version, e.trace_id) == ("r", "m", 5, "v", "t")
    want = dict(kind, probs=pack_probs(kind["probs"])) if "probs" in kind else kind
    for name in ("probs", "label", "score", "text", "confidence"):
        assert getattr(e, name) == want.get(name)


def test_an_event_without_a_prediction_is_the_base_class() -> None:
    """With no kind given the event is a PredictionEvent whose kinds all read None."""
    e = PredictionEvent("r", "m", 5)
    assert type(e) is PredictionEvent
    assert (e.probs, e.label, e.score, e.text, e.confidence) == (None,) * 5


@pytest.mark.parametrize(
    "kinds", [{"probs": (1.0,), "label": 0}, {"label": 0, "score": 1.0}, {"confidence": 0.5}]
)
def test_two_kinds_or_a_confidence_without_text_are_refused(kinds: dict[str, object]) -> None:
    """An event holds one kind of prediction; confidence belongs to a text."""
    with pytest.raises(TypeError, match="one of probs, label, score or text"):
        PredictionEvent("r", "m", 5, **kinds)


def test_the_one_class_constructor_takes_its_positional_order() -> None:
    """Positional arguments keep the order of the one-class signature."""
    e = PredictionEvent("r", "m", 5, None, 2, None, "v", "t", "00-tp")
    assert (type(e), e.label, e.model_version, e.trace_id, e.traceparent) == (
        TracedLabelEvent,
        2,
        "v",
        "t",
        "00-tp",
    )


def test_events_compare_by_kind_and_fields_and_survive_pickle() -> None:
    """Equal fields of one kind are equal events; a pickled event comes back equal."""
    a = PredictionEvent("r", "m", 5, probs=(0.5, 0.5))
    assert a == PredictionEvent("r", "m", 5, probs=(0.5, 0.5))
    assert a != PredictionEvent("r", "m", 5, probs=(0.4, 0.6))
    assert PredictionEvent("r", "m", 5, label=0) != PredictionEvent("r", "m", 5, score=0.0)
    assert pickle.loads(pickle.dumps(a)) == a


def test_a_decoded_event_is_small_and_not_tracked_by_the_collector() -> None:
    """A pending event is a probs struct of six fields with no collector header."""
    cfg = build_config({"models": [{"name": "m"}], "fusion": {"labels": ["a", "b"]}})
    value = {"request_id": "r", "model": "m", "ts": 5, "probs": [0.5, 0.5], "trace_id": "t"}
    e = Decoder(cfg).decode(orjson.dumps(value), None)
    assert type(e) is ProbsEvent
    assert not gc.is_tracked(e)
    assert sys.getsizeof(e) == 16 + 6 * 8


def test_a_kind_subclass_is_built_from_its_fields_in_order() -> None:
    """The decoder's call: common fields, then the kind's (text: text, confidence)."""
    e = TextEvent("r", "m", 5, None, None, "hi", None)
    assert (e.text, e.confidence, e.probs, e.traceparent) == ("hi", None, None, None)


@pytest.mark.parametrize(("kind", "cls"), KINDS)
def test_a_traced_event_is_the_same_event_with_a_traceparent(
    kind: dict[str, object], cls: type[PredictionEvent]
) -> None:
    """traced(tp) keeps every field and adds the traceparent, as the constructor does;
    a second call replaces it; only a traced event spends a field on it."""
    e = PredictionEvent("r", "m", 5, model_version="v", trace_id="t", **kind)
    traced = e.traced("00-a")
    assert traced == PredictionEvent(
        "r", "m", 5, model_version="v", trace_id="t", traceparent="00-a", **kind
    )
    assert isinstance(traced, cls)
    assert traced.traced("00-b").traceparent == "00-b"
    assert sys.getsizeof(traced) == sys.getsizeof(e) + 8
    assert e.traceparent is None


def test_an_event_without_a_prediction_can_be_traced() -> None:
    """The base class has a traced form too."""
    e = PredictionEvent("r", "m", 5, traceparent="00-a")
    assert (e.traceparent, e.probs) == ("00-a", None)
    assert e == PredictionEvent("r", "m", 5).traced("00-a")


def test_a_finished_request_compares_by_its_fields_and_is_untracked() -> None:
    """Equality compares every field, and a finished request is not tracked by the
    cycle collector (it holds no cycle)."""
    members = {"m": PredictionEvent("r", "m", 5, probs=(0.5, 0.5))}
    done = FinishedRequest("r", members, 5, 6, 7, False)
    assert done == FinishedRequest("r", dict(members), 5, 6, 7, False)
    assert done != FinishedRequest("r", members, 5, 6, 7, True)
    assert done != FinishedRequest("r", members, 5, 6, 7, False, decided=True)
    assert not gc.is_tracked(done)
