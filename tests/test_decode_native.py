"""The compiled decoder (``native/src/decode.rs``, ``Decoder.decode_many``) decodes the
common valid event of a classification task exactly as the Python decoder does, and
hands everything else back (None) so that Python gives the reason: on generated, damaged
and edge-case values (the generators of tests/test_decode_fast.py), on numbers written
with many digits, on sums at the tolerance, with the record key checked, and through the
engine, whose steps are the same with and without it."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fusion.test_result_bytes import _config, _draws, _records
from tests.test_decode_fast import DECODERS, EDGES, events, record_ts
from worker.decode import check_key
from worker.engine import Engine, InRecord
from worker.errors import InvalidEvent
from worker.fusion import Fuser

DECODER = DECODERS["classify"]  # bert-base and roberta in the fused labels, rater in codes


def fast(value: bytes | None, ts: int | None = None, key: bytes | None = None) -> Any:
    """The compiled decoder's answer for one record (key checked when given)."""
    record = InRecord("in", 0, 0, key, value, ts)
    events = DECODER.decode_many([record], check_keys=key is not None)
    assert events is not None, "the compiled decoder is not installed (make .venv)"
    return events[0]


def python(value: bytes | None, ts: int | None, key: bytes | None = None) -> object:
    """The Python decoder's answer: the event, or the reason and detail."""
    try:
        event = DECODER.decode(value, ts)
        if key is not None:
            check_key(key, event)
    except InvalidEvent as exc:
        return (exc.reason, exc.detail)
    return event


def test_the_test_environment_has_the_compiled_decoder() -> None:
    """``make`` builds native/ into the virtualenv; a classification decoder uses it, the
    regression and text decoders do not."""
    assert DECODER.decode_many([], check_keys=False) == []
    assert DECODERS["regress"].decode_many([], check_keys=False) is None
    assert DECODERS["text"].decode_many([], check_keys=False) is None


@settings(max_examples=400)
@given(events(), record_ts, st.sampled_from([None, b"r", b"other"]))
def test_generated_events_decode_as_python_decodes_them(
    doc: dict[str, Any], ts: int | None, key: bytes | None
) -> None:
    """Property: on any generated event, valid or not, with a key that matches or not:
    the compiled decoder's event is Python's, or it leaves the record to Python."""
    value = orjson.dumps(doc) if _serialisable(doc) else b"{}"
    event = fast(value, ts, key)
    if event is not None:
        assert event == python(value, ts, key)


def _serialisable(doc: dict[str, Any]) -> bool:
    try:
        orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits: orjson refuses it
        return False
    return True


@given(events(), st.integers(0, 599), st.binary(max_size=3))
def test_damaged_values_decode_as_python_decodes_them(
    doc: dict[str, Any], at: int, junk: bytes
) -> None:
    """Property: a generated event with bytes cut or inserted: the same event or None."""
    value = orjson.dumps(doc) if _serialisable(doc) else b"{}"
    value = value[:at] + junk + value[at + len(junk) :]
    event = fast(value, 42)
    if event is not None:
        assert event == python(value, 42)


@pytest.mark.parametrize("value", EDGES)
def test_the_parsers_edge_cases_decode_as_python_decodes_them(value: bytes | None) -> None:
    """Duplicate keys, number forms, surrogates, byte order marks, nulls, code points
    against bytes: the same event or None."""
    event = fast(value, 42)
    if event is not None:
        assert event == python(value, 42)


COMMON: list[dict[str, Any]] = [
    {"probs": [0.2, 0.3, 0.5], "ts": 5},
    {"probs": [0, 1, 0], "ts": 0},
    {"probs": [-0.0, 0.25, 0.75]},
    {"probs": [0.2, 0.3, 0.5], "model_version": "v1", "trace_id": 't\u00e9\n"x\\'},
    {"label": "neutral", "ts": 9_223_372_036_854_775_807},
    {"label": "positive", "model": "bert-base", "model_version": ""},
]


@pytest.mark.parametrize("doc", COMMON)
@pytest.mark.parametrize("record_ts", [None, 42])
def test_the_common_events_are_decoded_as_the_careful_path_decodes_them(
    doc: dict[str, Any], record_ts: int | None
) -> None:
    """A probs vector in the configured order or a configured label, from a model that
    reports in the fused labels: the compiled path's event is the careful path's."""
    value = orjson.dumps({"request_id": "r\u00e9-\U0001f600\t1", "model": "roberta", **doc})
    if "ts" not in doc and record_ts is None:
        assert fast(value, record_ts) is None  # no event time: Python says why
        return
    event = fast(value, record_ts, key=b"r\xc3\xa9-\xf0\x9f\x98\x80\t1")
    assert event is not None
    assert event == DECODER.decode_careful(value, record_ts)
    assert type(event) is type(DECODER.decode_careful(value, record_ts))


OTHERS = [
    b'{"request_id":"r","model":"roberta","probs":[0.5,0.3,0.2],'
    b'"labels":["positive","neutral","negative"]}',
    b'{"request_id":"r","model":"rater","ts":1,"probs":[0.1,0.2,0.3,0.4]}',
    b'{"request_id":"r","model":"rater","ts":1,"label":"4"}',
    b'{"request_id":"r","model":"gpt","ts":1,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":1,"label":"angry"}',
    b'{"request_id":"r","model":"roberta","ts":1,"score":0.5}',
    b'{"request_id":"r","model":"roberta","ts":1,"text":"Paris"}',
    b'{"request_id":"r","model":"roberta","ts":1,"label":"neutral","label":"negative"}',
    b'{"request_id":"r","model":"roberta","ts":1,"label":"neutral","trace_id":null}',
    b'{"request_id":"r","model":"roberta","ts":5.0,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":-1,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":1,"probs":[-0.5,0.5,1.0]}',
    b'{"request_id":"r","model":"roberta","ts":1,"probs":[0.5,0.5,0.5]}',
    b'{"request_id":"r","model":"roberta","ts":1,"probs":[0.5,0.5]}',
    b'{"request_id":"r","model":"roberta","ts":1,"probs":[1e999,0,0]}',
    b'{"request_id":"r","model":"roberta","ts":1,"probs":["0.2",0.3,0.5]}',
    b'{"request_id":"","model":"roberta","ts":1,"label":"neutral"}',
    b'{"request_id":"\\ud800","model":"roberta","ts":1,"label":"neutral"}',
    b'{"request_id":"r","model":"roberta","ts":1,"label":"neutral","colour":"red"}',
    b'{"request_id":"r","model":"roberta","ts":1,"label":"neutral"} x',
    b" " * 601,
    b"",
    None,
]


def test_a_key_that_is_not_the_request_id_is_left_to_python() -> None:
    """With the key checked, a record keyed otherwise (or not at all) is None: Python
    raises ``key_mismatch``."""
    value = orjson.dumps({"request_id": "r", "model": "roberta", "ts": 1, "label": "neutral"})
    assert fast(value, None, key=b"r") is not None
    assert fast(value, None, key=b"s") is None
    record = InRecord("in", 0, 0, None, value)
    assert DECODER.decode_many([record], check_keys=True) == [None]


@pytest.mark.parametrize("value", OTHERS)
def test_every_other_value_is_left_to_python(value: bytes | None) -> None:
    """Another shape (labels, codes of a model's own, score, text), an unknown model or
    label, a duplicate key, a null, a float or negative ts, a probability that is negative,
    not a number or infinite, a bad sum or length, a bad request id, an unknown field,
    trailing bytes, a value over the size limit, an empty value or none: None."""
    assert fast(value, 42) is None


@pytest.mark.parametrize("text", [b"a\xff", b"\xed\xa0\x80", b"\xc3", b"a\xc3\xa9"])
def test_a_value_with_bytes_that_are_not_utf8_is_left_to_python(text: bytes) -> None:
    """A string that is not UTF-8 (a stray byte, a surrogate, a cut sequence) is None,
    and Python names the reason; a valid multi-byte one is decoded as Python does."""
    value = (
        b'{"request_id":"r1","model":"bert-base","ts":5,"probs":[0.5,0.25,0.25],'
        b'"trace_id":"' + text + b'"}'
    )
    expected = python(value, 5)
    if isinstance(expected, tuple):
        assert fast(value, 5) is None
        assert expected[0] == "json"
    else:
        assert fast(value, 5) == expected


# Probabilities written as a producer might: many significant digits, exponents.
digits = st.integers(1, 10**30)
scale = st.integers(1, 40)


@settings(max_examples=300)
@given(digits, scale, digits, scale, st.booleans())
def test_numbers_with_many_digits_read_as_the_careful_path_reads_them(
    d1: int, e1: int, d2: int, e2: int, exponent_form: bool
) -> None:
    """Property: two probabilities of up to 30 significant digits (in decimal or exponent
    form) and the rest of 1 written exactly: where the compiled path gives an event, its
    packed probabilities are the careful path's, bit for bit (both round correctly)."""
    a = Decimal(d1).scaleb(-e1 - len(str(d1)))
    b = Decimal(d2).scaleb(-e2 - len(str(d2)))
    rest = Decimal(1) - a - b
    if rest < 0:
        return
    text = [f"{x:E}" if exponent_form else f"{x:f}" for x in (a, b, rest)]
    value = f'{{"request_id":"r","model":"roberta","ts":1,"probs":[{",".join(text)}]}}'.encode()
    event = fast(value)
    assert event is not None
    assert event.probs == DECODER.decode_careful(value, None).probs


@settings(max_examples=300)
@given(st.floats(0, 1), st.floats(0, 1), st.integers(-40, 40))
def test_sums_at_the_tolerance_get_the_careful_verdict(a: float, b: float, ulps: int) -> None:
    """Property: probabilities whose sum lies within a few dozen ulps of 1 +- the
    tolerance: the compiled path gives the careful path's event or leaves it to Python,
    never an event the careful path refuses."""
    tolerance = DECODER._tolerance
    edge = 1.0 + tolerance + ulps * 2.220446049250313e-16
    c = edge - a - b
    value = orjson.dumps({"request_id": "r", "model": "roberta", "ts": 1, "probs": [a, b, c]})
    event = fast(value)
    if event is not None:
        assert event == DECODER.decode_careful(value, None)


def test_model_versions_are_shared_string_objects() -> None:
    """Two events naming the same model version hold one string object (a million pending
    requests would otherwise hold a copy each)."""
    docs = [{"request_id": f"r{i}", "model": "roberta", "ts": 1, "label": "neutral"} for i in "12"]
    first, second = (fast(orjson.dumps({**d, "model_version": "2025.06-rc"})) for d in docs)
    assert first is not None
    assert second is not None
    assert first.model_version is second.model_version


def _engine_steps(records: list[InRecord], compiled: bool) -> list[Any]:
    """The live engine's steps over ``records`` (keys checked), with the compiled decoder
    or without it."""
    config = _config("soft_vote_early", Path("unused"))
    engine = Engine(config, Fuser(config), encode=True, results=False, check_keys=True)
    engine.open(0)
    engine.open(1)
    if not compiled:
        engine._decoder._fast = None
    steps = [engine.step(records[i : i + 50], 1_700_000_000_000 + i) for i in range(0, 600, 50)]
    return [
        (
            {p: [(r.topic, r.key, r.value, r.headers) for r in rs] for p, rs in s.outputs.items()},
            s.accepted,
            s.other,
            s.dead_letters,
            s.positions,
            s.records,
        )
        for s in steps
    ]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1 << 32))
def test_the_engine_steps_alike_with_and_without_the_compiled_decoder(seed: int) -> None:
    """Property: 600 records of valid events, some damaged, some keyed otherwise or not
    at all: the same outputs (results, dead letters with their reasons, in order), counts
    and positions with the compiled decoder as without it."""
    rng = random.Random(seed)
    records = []
    for r in _records("labels", _draws(seed), 600):
        value, key = r.value, r.key
        roll = rng.random()
        if roll < 0.05 and value is not None:
            cut = rng.randrange(len(value))
            value = value[:cut] + value[cut + 1 :]
        elif roll < 0.08:
            key = rng.choice([None, b"elsewhere"])
        records.append(InRecord(r.topic, r.partition, r.offset, key, value, r.timestamp, r.headers))
    assert _engine_steps(records, compiled=True) == _engine_steps(records, compiled=False)
