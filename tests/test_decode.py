"""The decoder: bytes -> PredictionEvent by the v1 contract, or InvalidEvent with a stable
reason naming the bad value. (Agreement with the JSON Schema: tests/test_schemas.py.)"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import json_values
from tests.test_decode_text import REASONS_SEEN as TEXT_REASONS_SEEN
from worker.config import Config, build_config
from worker.decode import REASONS, Decoder
from worker.errors import InvalidEvent
from worker.events import PredictionEvent, unpack_probs

LABELS = ["negative", "neutral", "positive"]


def config(**fusion: Any) -> Config:
    return build_config(
        {
            "fusion": {"labels": LABELS, **fusion},
            "models": [{"name": "bert-base"}, {"name": "roberta"}],
            "kafka": {"max_event_bytes": 4096},
        }
    )


CLASSIFY = Decoder(config())
REGRESS = Decoder(config(labels=[], strategy="weighted_average"))


def event(**fields: Any) -> dict[str, Any]:
    """A valid base event with ``fields`` set; a field given as ``...`` is removed."""
    base: dict[str, Any] = {"request_id": "r1", "model": "roberta", "ts": 1000}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def decode(
    doc: dict[str, Any], decoder: Decoder = CLASSIFY, record_ts: int | None = None
) -> PredictionEvent:
    return decoder.decode(orjson.dumps(doc), record_ts)


def reason(value: bytes | None, decoder: Decoder = CLASSIFY, record_ts: int | None = None) -> str:
    with pytest.raises(InvalidEvent) as info:
        decoder.decode(value, record_ts)
    return info.value.reason


def verdict(value: bytes) -> str:
    """ "ok" or the reason the decoder gives; any other exception propagates."""
    try:
        CLASSIFY.decode(value, 0)
    except InvalidEvent as exc:
        return exc.reason
    return "ok"


# -- accepted events -------------------------------------------------------------------


def test_probs_in_the_configured_order_are_kept() -> None:
    """A valid probs event decodes to its fields, probs packed as float64."""
    ev = decode(event(probs=[0.1, 0.2, 0.7], model_version="v1", trace_id="t"))
    assert (ev.request_id, ev.model, ev.ts) == ("r1", "roberta", 1000)
    assert unpack_probs(ev.probs) == [0.1, 0.2, 0.7]
    assert (ev.label, ev.score, ev.model_version, ev.trace_id) == (None, None, "v1", "t")


def test_probs_are_aligned_to_the_configured_label_order() -> None:
    """With ``labels``, each probability lands at its label's configured position."""
    ev = decode(event(probs=[0.7, 0.1, 0.2], labels=["positive", "negative", "neutral"]))
    assert unpack_probs(ev.probs) == [0.1, 0.2, 0.7]


def test_a_label_order_seen_before_aligns_the_same_way() -> None:
    """The cached alignment of a repeated ``labels`` order gives the same result."""
    order = ["neutral", "positive", "negative"]
    first = decode(event(probs=[0.2, 0.7, 0.1], labels=order))
    again = decode(event(probs=[0.3, 0.6, 0.1], labels=order))
    assert unpack_probs(first.probs) == [0.1, 0.2, 0.7]
    assert unpack_probs(again.probs) == [0.1, 0.3, 0.6]


def test_integer_probabilities_become_floats() -> None:
    """JSON integers in probs are numbers like any other, stored as floats."""
    ev = decode(event(probs=[0, 1, 0]))
    assert unpack_probs(ev.probs) == [0.0, 1.0, 0.0]


def test_a_label_becomes_its_configured_index() -> None:
    """A hard label is stored as its index in the configured labels."""
    assert decode(event(label="positive")).label == 2


def test_a_score_is_accepted_without_labels() -> None:
    """Regression: a finite score is the prediction; integers become floats."""
    ev = decode(event(score=3), REGRESS)
    assert ev.score == 3.0
    assert type(ev.score) is float


def test_the_record_timestamp_stands_in_for_a_missing_ts() -> None:
    """Without ``ts`` the record timestamp is the event time."""
    assert decode(event(ts=..., label="neutral"), record_ts=42).ts == 42


def test_ts_wins_over_the_record_timestamp() -> None:
    """An event's own ts is its event time, whatever the record says."""
    assert decode(event(ts=7, label="neutral"), record_ts=42).ts == 7


def test_an_integer_valued_float_ts_is_an_integer() -> None:
    """``1.7e12`` is an integer, as JSON Schema counts it."""
    ev = CLASSIFY.decode(b'{"request_id":"r","model":"roberta","ts":1.7e12,"label":"neutral"}', 0)
    assert ev.ts == 1_700_000_000_000
    assert type(ev.ts) is int


def test_probs_within_the_tolerance_are_accepted() -> None:
    """A sum off by less than fusion.prob_tolerance is fine (kept as sent)."""
    assert unpack_probs(decode(event(probs=[0.1, 0.2, 0.7005])).probs) == [0.1, 0.2, 0.7005]


def test_model_names_share_the_configured_string() -> None:
    """Decoded events hold the config's model string, not a copy per event."""
    cfg = config()
    ev = Decoder(cfg).decode(orjson.dumps(event(label="neutral")), None)
    assert ev.model is cfg.model_names[1]


# -- rejected events: each rule has its reason -----------------------------------------

REJECTED: list[tuple[str, bytes | None, str]] = [
    ("tombstone", None, "json"),
    ("empty", b"", "json"),
    ("not JSON", b"{oops", "json"),
    ("array", b"[]", "json"),
    ("invalid UTF-8", b'{"request_id": "\xff"}', "json"),
    ("NaN", b'{"request_id":"r","model":"roberta","ts":1,"probs":[NaN,0.5,0.5]}', "non_finite"),
    ("Infinity", b'{"request_id":"r","model":"roberta","ts":1,"score":Infinity}', "non_finite"),
    ("-Infinity", b'{"request_id":"r","model":"roberta","ts":1,"score":-Infinity}', "non_finite"),
    ("overflow", b'{"request_id":"r","model":"roberta","ts":1,"score":1e999}', "non_finite"),
    ("unknown field", orjson.dumps(event(label="neutral", colour="red")), "schema"),
    ("no request_id", orjson.dumps(event(request_id=..., label="neutral")), "schema"),
    ("long request_id", orjson.dumps(event(request_id="x" * 257, label="neutral")), "schema"),
    ("no model", orjson.dumps(event(model=..., label="neutral")), "schema"),
    ("ts string", orjson.dumps(event(ts="1", label="neutral")), "schema"),
    ("ts fraction", orjson.dumps(event(ts=1.5, label="neutral")), "schema"),
    ("ts negative", orjson.dumps(event(ts=-1, label="neutral")), "schema"),
    ("no ts, no record ts", orjson.dumps(event(ts=..., label="neutral")), "schema"),
    ("two kinds", orjson.dumps(event(label="neutral", score=1.0)), "schema"),
    ("no kind", orjson.dumps(event()), "schema"),
    ("labels without probs", orjson.dumps(event(label="neutral", labels=LABELS)), "schema"),
    ("probs of strings", orjson.dumps(event(probs=["0.5", "0.5", "0"])), "schema"),
    ("probs of bools", orjson.dumps(event(probs=[True, False, False])), "schema"),
    ("version null", orjson.dumps(event(label="neutral", model_version=None)), "schema"),
    ("negative", orjson.dumps(event(probs=[-0.5, 0.5, 1.0])), "negative"),
    ("unknown model", orjson.dumps(event(model="gpt", label="neutral")), "unknown_model"),
    ("unknown label", orjson.dumps(event(label="angry")), "unknown_label"),
    (
        "unknown labels entry",
        orjson.dumps(event(probs=[0.1, 0.2, 0.7], labels=["negative", "neutral", "angry"])),
        "unknown_label",
    ),
    ("probs too long", orjson.dumps(event(probs=[0.25, 0.25, 0.25, 0.25])), "label_mismatch"),
    (
        "labels too short",
        orjson.dumps(event(probs=[0.5, 0.5], labels=["negative", "neutral"])),
        "label_mismatch",
    ),
    (
        "probs and labels lengths differ",
        orjson.dumps(event(probs=[0.5, 0.5], labels=LABELS)),
        "label_mismatch",
    ),
    ("score in classification", orjson.dumps(event(score=0.5)), "label_mismatch"),
    ("not normalised", orjson.dumps(event(probs=[0.2, 0.2, 0.2])), "not_normalised"),
    ("too large", b" " * 4097, "too_large"),
]


@pytest.mark.parametrize(("value", "want"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_each_broken_rule_has_its_reason(value: bytes | None, want: str) -> None:
    """Every rule of the contract rejects with its own stable reason code."""
    assert reason(value) == want


def test_every_reason_is_listed() -> None:
    """REASONS (the DLQ codes) is exactly the set the decoder raises (the text task's
    reasons: tests/test_decode_text.py)."""
    assert {c[2] for c in REJECTED} | TEXT_REASONS_SEEN == set(REASONS)


@pytest.mark.parametrize("doc", [event(probs=[0.5, 0.5]), event(label="neutral")])
def test_regression_rejects_class_predictions(doc: dict[str, Any]) -> None:
    """Without configured labels, probs and label do not fit the task."""
    assert reason(orjson.dumps(doc), REGRESS) == "label_mismatch"


def test_size_is_checked_before_parsing() -> None:
    """A value over kafka.max_event_bytes is too_large even when it is not JSON."""
    assert reason(b"x" * 5000) == "too_large"


def test_a_negative_record_timestamp_means_none() -> None:
    """Kafka's NO_TIMESTAMP (-1) does not stand in for a missing ts."""
    assert reason(orjson.dumps(event(ts=..., label="neutral")), record_ts=-1) == "schema"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (orjson.dumps(event(model="gpt-9", label="neutral")), "'gpt-9'"),
        (orjson.dumps(event(label="angry")), "'angry'"),
        (orjson.dumps(event(probs=[-0.25, 0.5, 0.75])), "-0.25"),
        (orjson.dumps(event(probs=[0.2, 0.2, 0.2])), "0.6"),
        (orjson.dumps(event(label="neutral", colour=1)), "'colour'"),
        (orjson.dumps(event(ts="soon", label="neutral")), "'soon'"),
        (b'{"request_id":"r","model":"roberta","ts":1,"score":NaN}', "NaN"),
    ],
)
def test_the_detail_names_the_bad_value(value: bytes, named: str) -> None:
    """The human-readable detail quotes the offending value."""
    with pytest.raises(InvalidEvent) as info:
        CLASSIFY.decode(value, None)
    assert named in info.value.detail


def test_a_nan_token_inside_a_string_is_fine() -> None:
    """Only bare NaN/Infinity tokens are non-finite; the same letters in a string are text."""
    assert decode(event(request_id="NaN-Infinity", label="neutral")).request_id == "NaN-Infinity"


# -- properties ------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(value: bytes) -> None:
    """Property: whatever the bytes, the decoder returns an event or raises InvalidEvent."""
    assert verdict(value) in {"ok", *REASONS}


fields = st.sampled_from(
    ["request_id", "model", "ts", "probs", "label", "score", "labels", "model_version", "x"]
)


@given(st.dictionaries(fields, json_values(2**70, 5, 8)))
def test_arbitrary_objects_never_raise_anything_but_invalid_event(doc: dict[str, Any]) -> None:
    """Property: any JSON object is decoded or rejected with a listed reason, no crash."""
    assert verdict(json.dumps(doc).encode()) in {"ok", *REASONS}


@given(
    order=st.permutations(LABELS),
    weights=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
)
def test_any_label_order_aligns_to_the_configured_one(
    order: list[str], weights: list[float]
) -> None:
    """Property: probs sent in any label order decode to the same configured-order vector."""
    total = math.fsum(weights)
    probs = {label: w / total for label, w in zip(LABELS, weights, strict=True)}
    ev = decode(event(probs=[probs[label] for label in order], labels=order))
    assert unpack_probs(ev.probs) == [probs[label] for label in LABELS]
