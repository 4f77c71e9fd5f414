"""The decoder's two paths agree: the fast one (a typed msgspec struct) gives the event,
or the reason and detail, that the careful one (orjson and checks by hand) gives, on
generated valid and invalid events under each kind of configuration; and valid events
take the fast path."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import json_values
from worker.config import build_config
from worker.decode import Decoder
from worker.errors import InvalidEvent
from worker.events import PredictionEvent

LABELS = ["negative", "neutral", "positive"]
MODELS = [{"name": "bert-base"}, {"name": "roberta"}]
DECODERS = {
    "classify": Decoder(
        build_config(
            {
                "fusion": {"labels": LABELS},
                "models": [
                    *MODELS,
                    {
                        "name": "rater",
                        "labels": ["1", "2", "3", "4"],
                        "label_map": {"1": "negative", "2": "neutral", "4": "positive"},
                    },
                ],
                "kafka": {"max_event_bytes": 600},
            }
        )
    ),
    "regress": Decoder(
        build_config({"fusion": {"labels": [], "strategy": "weighted_average"}, "models": MODELS})
    ),
    "text": Decoder(
        build_config(
            {
                "fusion": {"task": "text", "strategy": "consensus", "max_text_chars": 20},
                "models": MODELS,
            }
        )
    ),
}


def outcome(call: Any, value: bytes | None, record_ts: int | None) -> object:
    """The event, or (reason, detail) of the InvalidEvent."""
    try:
        event: PredictionEvent = call(value, record_ts)
    except InvalidEvent as exc:
        return (exc.reason, exc.detail)
    return event


def assert_paths_agree(value: bytes | None, record_ts: int | None) -> None:
    for name, decoder in DECODERS.items():
        fast = outcome(decoder.decode, value, record_ts)
        careful = outcome(decoder.decode_careful, value, record_ts)
        assert fast == careful, (name, value, record_ts)


# -- generated events ---------------------------------------------------------------------

ODD = st.sampled_from([None, True, False, 0, -1, 1.5, "", [], {}, [1], 2**64, -0.0, 1e308])
probs = st.one_of(
    st.lists(st.floats(0, 1), min_size=2, max_size=4),
    st.lists(st.sampled_from([0, 1, 0.5, 0.25, -0.5, 2**63]), min_size=1, max_size=4),
    st.permutations([0.2, 0.3, 0.5]),
    st.permutations([0.1, 0.2, 0.3, 0.4]),
)
labels = st.one_of(
    st.permutations(LABELS),
    st.permutations(["1", "2", "3", "4"]),
    st.lists(st.sampled_from([*LABELS, "angry", "1", "4"]), min_size=0, max_size=4),
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "request_id": st.text(min_size=0, max_size=3) | st.sampled_from(["x" * 256, "x" * 257]),
    "model": st.sampled_from(["bert-base", "roberta", "rater", "gpt"]),
    "ts": st.integers(-2, 2**64) | st.sampled_from([5.0, 5.5, 1.7e12, 1e19, -0.0]),
    "probs": probs,
    "label": st.sampled_from([*LABELS, "angry", "1", "3", "4"]),
    "score": st.floats(-1e6, 1e6) | st.integers(-(2**70), 2**70),
    "text": st.text(max_size=24) | st.sampled_from(["Paris", "...", " ", "x" * 65537]),
    "confidence": st.floats(-0.5, 1.5) | st.integers(-1, 2),
    "labels": labels,
    "model_version": st.sampled_from(["v1", "v2", ""]),
    "trace_id": st.text(max_size=4),
    "colour": st.just("red"),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An event of one kind, mostly valid; some fields then dropped, added or odd."""
    doc: dict[str, Any] = {"request_id": draw(FIELD_VALUES["request_id"]), "model": "roberta"}
    kind = draw(st.sampled_from(["probs", "label", "score", "text"]))
    doc[kind] = draw(FIELD_VALUES[kind])
    optional = ["ts", "model", "model_version", "trace_id"]
    optional += {"probs": ["labels"], "text": ["confidence"]}.get(kind, [])
    for name in draw(st.lists(st.sampled_from(optional), unique=True)):
        doc[name] = draw(FIELD_VALUES[name])
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=2, unique=True)):
        doc[name] = draw(FIELD_VALUES[name] | ODD | json_values(2**65, 4, 4))
    for name in draw(st.lists(st.sampled_from(sorted(doc)), max_size=1)):
        del doc[name]
    return doc


record_ts = st.sampled_from([None, -1, 0, 42])


@settings(max_examples=400)
@given(events(), record_ts)
def test_the_paths_agree_on_generated_events(doc: dict[str, Any], ts: int | None) -> None:
    """Property: on any generated event, valid or not, decode gives what the careful
    path gives: the same event, or the same reason and detail."""
    assert_paths_agree(json.dumps(doc).encode(), ts)


@given(events(), st.integers(0, 599), st.binary(max_size=3))
def test_the_paths_agree_on_damaged_values(doc: dict[str, Any], at: int, junk: bytes) -> None:
    """Property: a generated event with bytes cut or inserted (broken JSON, bad UTF-8,
    sizes around the limit): the paths agree."""
    value = json.dumps(doc, ensure_ascii=False).encode()
    assert_paths_agree(value[:at] + junk + value[at + len(junk) :], 42)


@given(st.binary(max_size=80))
def test_the_paths_agree_on_arbitrary_bytes(value: bytes) -> None:
    """Property: whatever the bytes, the paths agree."""
    assert_paths_agree(value, 42)


EDGES = [
    None,
    b"",
    b"[]",
    b" " * 601,
    b'{"request_id":"r","model":"roberta","label":"neutral","label":"angry"}',
    b'{"request_id":"r","model":"roberta","label":"angry","label":"neutral"}',
    b'{"request_id":"r","model":"roberta","probs":[0.5,0.5],"probs":[0.2,0.3,0.5]}',
    b'{"request_id":"r","model":"roberta","ts":5.0,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":-0,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":1e3,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":9223372036854775808,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","score":1e999}',
    b'{"request_id":"r","model":"roberta","score":NaN}',
    b'{"request_id":"r","model":"roberta","probs":[1e999,0,0]}',
    b'{"request_id":"r","model":"roberta","probs":[100000000000000000000000,0,0]}',
    b'{"request_id":"\\ud800","model":"roberta","label":"neutral"}',
    b'{"request_id":"\xed\xa0\x80","model":"roberta","label":"neutral"}',
    b'\xef\xbb\xbf{"request_id":"r","model":"roberta","label":"neutral"}',
    b'{"request_id":"r","model":"roberta","label":"neutral"}\x00',
    b'{"request_id":"r","model":"roberta","label":"neutral","model_version":null}',
    b'{"request_id":"r","model":"roberta","probs":[0.2,0.3,0.5],"labels":null}',
    b'{"request_id":"r","model":"roberta","probs":[0.2,0.3,0.5],'
    b'"labels":["negative","negative","positive"]}',
    b'{"request_id":"r","model":"rater","probs":[0.1,0.2,0.3,0.4],"labels":["1","1","2","4"]}',
    b'{"request_id":"r","model":"roberta","label":"neutral","labels":["negative","positive"]}',
    b'{"request_id":"r","model":"roberta","label":"neutral","confidence":0.5}',
    b'{"request_id":"r","model":"roberta","text":"Paris","label":"neutral"}',
    orjson.dumps({"request_id": "\U0001f600" * 256, "model": "roberta", "label": "neutral"}),
    orjson.dumps({"request_id": "\U0001f600" * 257, "model": "roberta", "label": "neutral"}),
]


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize("ts", [None, 42])
def test_the_paths_agree_where_the_parsers_differ(value: bytes | None, ts: int | None) -> None:
    """Where orjson and msgspec could part (duplicate keys, number forms, surrogates,
    byte order marks, nulls, code points against bytes) and the rules the struct cannot
    state (distinct labels, one kind, labels only with probs, confidence only with
    text): the paths agree."""
    assert_paths_agree(value, ts)


# -- the fast path is the common one ----------------------------------------------------


def test_valid_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of valid event is decoded without the careful path."""

    def careful(*args: object) -> PredictionEvent:
        raise AssertionError("took the careful path")

    monkeypatch.setattr(Decoder, "decode_careful", careful)
    base = {"request_id": "r", "model": "roberta", "ts": 5, "model_version": "v", "trace_id": "t"}
    for name, doc in [
        ("classify", {"probs": [0.2, 0.3, 0.5]}),
        ("classify", {"probs": [0.5, 0.3, 0.2], "labels": ["positive", "neutral", "negative"]}),
        ("classify", {"label": "neutral"}),
        ("classify", {"model": "rater", "probs": [0.1, 0.2, 0.3, 0.4]}),
        ("regress", {"score": 2}),
        ("text", {"text": "Paris", "confidence": 0.5}),
    ]:
        assert DECODERS[name].decode(orjson.dumps({**base, **doc}), None).request_id == "r"


def test_an_event_the_struct_refuses_is_decided_by_the_careful_path() -> None:
    """An integer-valued float ts is an integer by the contract but not to the struct:
    the careful path accepts it."""
    value = json.dumps({"request_id": "r", "model": "roberta", "ts": 5.0, "label": "neutral"})
    assert DECODERS["classify"].decode(value.encode(), None).ts == 5
