"""The client kit's checks before sending: they agree with schemas/prediction.v1.json and
the worker's decoder, accept the v1.1 text fields, and the pure parts of the kit (the
memory of unclaimed results, the connection options) keep their bounds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.client import (
    TEXT_MAX_CHARS,
    ConnectionOptions,
    InvalidPrediction,
    check_event,
    check_traceparent,
)
from worker.client._memory import ResultMemory
from worker.config import build_config
from worker.decode import CONFIG_REASONS, Decoder
from worker.errors import ConfigError, FusionError, InvalidEvent

REPO = Path(__file__).resolve().parent.parent
CASES = json.loads((REPO / "tests" / "data" / "prediction_cases.json").read_text("utf-8"))
SCHEMA = Draft202012Validator(
    json.loads((REPO / "schemas" / "prediction.v1.json").read_text("utf-8"))
)
DECODER = Decoder(build_config(CASES["config"]))
# What the worker may reject and the kit cannot know: configuration, or its size limit.
LENIENT = CONFIG_REASONS | {"too_large"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def client_says(doc: Any) -> str:
    try:
        check_event(doc)
    except InvalidPrediction as exc:
        return exc.reason
    return "ok"


def schema_says(doc: Any) -> bool:
    """The schema's verdict; a non-finite float is not JSON at all, so invalid."""
    try:
        orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return False
    if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(doc)):
        return False
    return bool(SCHEMA.is_valid(doc))


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def assert_agree(doc: Any) -> None:
    verdict = client_says(doc)
    if schema_says(doc):
        assert verdict == "ok" or verdict in LENIENT, (doc, verdict)
    else:
        assert verdict != "ok", (doc, "the client accepts what the schema rejects")
        assert verdict not in LENIENT, (doc, verdict)


def table_docs() -> list[tuple[str, Any]]:
    """The table's events as Python objects (raw text parsed leniently, NaN included);
    raw text that is not JSON never reaches a publisher and is left out."""
    out: list[tuple[str, Any]] = []
    for case in CASES["cases"]:
        if "event" in case:
            out.append((case["case"], case["event"]))
            continue
        try:
            out.append((case["case"], json.loads(case["raw"])))
        except ValueError:
            continue
    return out


TABLE = table_docs()


@pytest.mark.parametrize(("name", "doc"), TABLE, ids=[n for n, _ in TABLE])
def test_client_and_schema_agree_on_the_table(name: str, doc: Any) -> None:
    """On every example of the table: schema-invalid -> refused for a wire reason;
    schema-valid -> accepted, or refused only for a reason the schema cannot see."""
    assert_agree(doc)


@pytest.mark.parametrize(("name", "doc"), TABLE, ids=[n for n, _ in TABLE])
def test_what_the_client_refuses_the_worker_refuses(name: str, doc: Any) -> None:
    """An event the client refuses is one the worker's decoder would dead-letter too."""
    if client_says(doc) == "ok":
        return
    try:
        value = orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return  # not JSON: the decoder never sees it from a publisher
    with pytest.raises(InvalidEvent):
        DECODER.decode(value, 1)


def test_the_table_has_both_verdicts() -> None:
    """The agreement test is not vacuous: the table has events the client accepts and
    events it refuses."""
    verdicts = {client_says(doc) == "ok" for _, doc in TABLE}
    assert verdicts == {True, False}


FIELD_VALUES = st.sampled_from(
    [None, True, 0, 5, -1, 1.5, 2**63, "", "r1", "x" * 257, [], [0.5, 0.5], [0.2, 0.2],
     [1, 0], [-0.5, 1.5], ["a", "b"], ["a", "a"], [0.5, "x"], {"a": 1}, float("nan")]
)  # fmt: skip
FIELD_NAMES = st.sampled_from(
    ["request_id", "model", "ts", "probs", "labels", "label", "score", "model_version",
     "trace_id", "extra"]
)  # fmt: skip


@given(
    base=st.sampled_from(
        [
            {"request_id": "r1", "model": "m", "probs": [0.25, 0.75]},
            {"request_id": "r1", "model": "m", "label": "a"},
            {"request_id": "r1", "model": "m", "score": 2.5},
        ]
    ),
    changes=st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=3),
)
def test_client_and_schema_agree_on_generated_events(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    """Valid events with up to three fields set to odd values: the client and the schema
    agree (the relation of the table test)."""
    assert_agree({**base, **changes})


def test_a_refusal_is_a_fusion_error_with_the_dead_letter_reason() -> None:
    """A refused event raises InvalidPrediction, a FusionError with the worker's reason code."""
    with pytest.raises(FusionError) as info:
        check_event({"request_id": "r1", "model": "m", "probs": [0.5, 0.6]})
    assert isinstance(info.value, InvalidPrediction)
    assert info.value.reason == "not_normalised"


def test_probs_and_labels_of_different_lengths_are_a_label_mismatch() -> None:
    """labels must name every probability (the decoder's reason, which the schema cannot see)."""
    doc = {"request_id": "r1", "model": "m", "probs": [0.5, 0.5], "labels": ["a", "b", "c"]}
    assert client_says(doc) == "label_mismatch"


def test_numpy_probabilities_are_encoded_as_floats() -> None:
    """A numpy array of probabilities is accepted and written as a JSON list of floats."""
    value = check_event({"request_id": "r1", "model": "m", "probs": np.array([0.25, 0.75])})
    assert orjson.loads(value)["probs"] == [0.25, 0.75]


def test_a_text_answer_with_confidence_is_accepted() -> None:
    """v1.1: text with a confidence in [0, 1] is a valid prediction."""
    value = check_event({"request_id": "r1", "model": "mt", "text": "Hallo", "confidence": 1})
    assert orjson.loads(value) == {
        "request_id": "r1",
        "model": "mt",
        "text": "Hallo",
        "confidence": 1.0,
    }


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"text": "x" * (TEXT_MAX_CHARS + 1)}, "schema"),
        ({"text": 3}, "text_type"),
        ({"text": "a", "confidence": 1.5}, "schema"),
        ({"text": "a", "confidence": -0.1}, "schema"),
        ({"text": "a", "confidence": float("nan")}, "non_finite"),
        ({"text": "a", "confidence": True}, "schema"),
        ({"label": "a", "confidence": 0.5}, "schema"),
        ({"text": "a", "label": "a"}, "schema"),
    ],
)
def test_bad_text_fields_are_refused(doc: dict[str, Any], reason: str) -> None:
    """text over the length limit or not a string, a confidence outside [0, 1] or not a
    number, a confidence without text, text beside another prediction: refused."""
    assert client_says({"request_id": "r1", "model": "m", **doc}) == reason


@pytest.mark.parametrize("field", ["probs", "score"])
def test_an_integer_beyond_a_double_is_non_finite(field: str) -> None:
    """10**400 cannot be a double (the worker's JSON reader refuses it as non-finite)."""
    value = [10**400, 0] if field == "probs" else 10**400
    assert client_says({"request_id": "r1", "model": "m", field: value}) == "non_finite"


def test_an_event_over_the_size_limit_is_too_large() -> None:
    """The encoded size is checked against max_event_bytes, the worker's own limit."""
    with pytest.raises(InvalidPrediction) as info:
        check_event({"request_id": "r1", "model": "m", "label": "a" * 200}, max_event_bytes=100)
    assert info.value.reason == "too_large"


def test_a_valid_traceparent_is_returned_as_header_bytes() -> None:
    """A W3C traceparent passes unchanged, as bytes for the record header."""
    assert check_traceparent(TRACEPARENT) == TRACEPARENT.encode()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ],
)
def test_a_malformed_traceparent_is_refused(value: str) -> None:
    """Wrong layout, upper case, version ff or an all-zero id: refused (reason traceparent)."""
    with pytest.raises(InvalidPrediction) as info:
        check_traceparent(value)
    assert info.value.reason == "traceparent"


# -- connection options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "MD5"}, "sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "sasl_username"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
            },
            "sasl_password",
        ),
        ({"request_timeout_ms": 0}, "request_timeout_ms"),
    ],
)
def test_bad_connection_options_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    """Invalid security settings raise ConfigError naming the key, when built."""
    with pytest.raises(ConfigError) as info:
        ConnectionOptions(**kwargs)
    assert info.value.key == key


def test_sasl_options_reach_the_client_and_not_the_repr() -> None:
    """SASL settings become aiokafka's keyword arguments; the password is not in repr."""
    opts = ConnectionOptions(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="s3cret",
    )
    kwargs = opts.kwargs("k:9092")
    assert kwargs["sasl_plain_username"] == "svc"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["bootstrap_servers"] == "k:9092"
    assert "s3cret" not in repr(opts)


# -- the memory of unclaimed results ---------------------------------------------------


def test_memory_keeps_at_most_max_results_newest_first_out() -> None:
    """Over the count bound the oldest results are forgotten first."""
    memory = ResultMemory(max_results=3, max_age_s=60.0)
    for i in range(5):
        memory.put(f"r{i}", {"i": i}, now_s=float(i))
    assert len(memory) == 3
    assert memory.get("r1", 5.0) is None
    assert memory.get("r2", 5.0) == {"i": 2}


def test_memory_forgets_results_older_than_max_age() -> None:
    """A result older than max_age_s is gone; a younger one stays."""
    memory = ResultMemory(max_results=100, max_age_s=10.0)
    memory.put("old", {}, now_s=0.0)
    memory.put("new", {}, now_s=5.0)
    assert memory.get("old", 10.5) is None
    assert memory.get("new", 10.5) == {}


def test_memory_keeps_the_first_result_of_a_request() -> None:
    """A repeated result (the worker may repeat after a crash) does not replace the first."""
    memory = ResultMemory(max_results=10, max_age_s=10.0)
    assert memory.put("r", {"n": 1}, 0.0)
    assert not memory.put("r", {"n": 2}, 1.0)
    assert memory.get("r", 1.0) == {"n": 1}
