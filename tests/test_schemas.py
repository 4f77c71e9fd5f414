"""The JSON Schemas (draft 2020-12) and the code agree.

prediction.v1.json and the decoder: on the example table (tests/data/prediction_cases.json)
and on generated events, a schema-valid event is accepted by the decoder or rejected only
for a reason the schema cannot see (it depends on the configuration: ``CONFIG_REASONS``,
or ``too_large``), and a schema-invalid one is always rejected, never for such a reason.
The decoder rejects more than the schema by design:

- configuration: a model or label that is not configured, probs of another length than
  the configured labels, a prediction kind that does not fit the task, probs not summing
  to 1, a value over ``kafka.max_event_bytes``;
- probs and labels of different lengths (draft 2020-12 cannot compare two arrays);
- text that is not strict JSON (NaN, Infinity, numbers overflowing a double): the schema
  never sees it, since it is not JSON at all, so both count it invalid.

dlq.v1.json: the headers the runtime writes on a dead-letter record match it.

Text events (tests/data/text_prediction_cases.json): the decoder under the table's text
configuration gives each case's verdict, and agrees with the schema as above; the text
checks it calls (``worker.text_event``) agree on the cases they own. The DLQ reason list
is exactly the decoder's reasons.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tests.strategies import json_values
from worker.config import build_config
from worker.decode import CONFIG_REASONS, DLQ_REASONS, REASONS, Decoder
from worker.engine import InRecord, dead_letter
from worker.errors import InvalidEvent
from worker.fusion.textnorm import TextNormalisation
from worker.text_event import (
    TEXT_CONFIG_REASONS,
    TEXT_MAX_CHARS,
    TEXT_REASONS,
    check_text_fields,
)

REPO = Path(__file__).resolve().parent.parent
CASES = json.loads((REPO / "tests" / "data" / "prediction_cases.json").read_text("utf-8"))
CONFIG = build_config(CASES["config"])
DECODER = Decoder(CONFIG)
RECORD_TS = 1  # every Kafka record has a timestamp; the decoder falls back to it
LABELS = list(CONFIG.fusion.labels)


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / "schemas" / name).read_text("utf-8"))
    return loaded


PREDICTION = Draft202012Validator(schema("prediction.v1.json"))
DLQ = Draft202012Validator(schema("dlq.v1.json"))


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{token} overflows a double")
    return value


def schema_says(value: bytes) -> bool:
    """The schema's verdict on a value: strict JSON (RFC 8259) that validates."""
    try:
        doc = json.loads(value, parse_constant=_no_constant, parse_float=_finite)
    except ValueError:
        return False
    return bool(PREDICTION.is_valid(doc))


def decoder_says(value: bytes) -> str:
    """ "ok" or the decoder's reason."""
    try:
        DECODER.decode(value, RECORD_TS)
    except InvalidEvent as exc:
        return exc.reason
    return "ok"


def agree(value: bytes) -> None:
    valid, verdict = schema_says(value), decoder_says(value)
    if valid:
        assert verdict == "ok" or verdict in CONFIG_REASONS | {"too_large"}, (value, verdict)
    else:
        assert verdict != "ok", (value, "the decoder accepts what the schema rejects")
        assert verdict not in CONFIG_REASONS, (value, verdict)


def case_value(case: dict[str, Any]) -> bytes:
    if "raw" in case:
        return str(case["raw"]).encode()
    return orjson.dumps(case["event"])


CASE_IDS = [c["case"] for c in CASES["cases"]]


# -- the schemas themselves ------------------------------------------------------------


@pytest.mark.parametrize("name", ["prediction.v1.json", "dlq.v1.json"])
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each schema is itself a valid draft 2020-12 schema."""
    doc = schema(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(doc)


@pytest.mark.parametrize("name", ["prediction.v1.json", "dlq.v1.json"])
def test_schema_examples_validate(name: str) -> None:
    """The examples a schema shows are valid under it."""
    doc = schema(name)
    for example in doc["examples"]:
        Draft202012Validator(doc).validate(example)


def test_the_prediction_examples_decode() -> None:
    """The schema's examples are accepted by the decoder (their models configured)."""
    examples = schema("prediction.v1.json")["examples"]
    models = [{"name": m} for m in sorted({e["model"] for e in examples})]
    cfg = build_config({**CASES["config"], "models": models})
    text_cfg = build_config({"fusion": {"task": "text", "strategy": "consensus"}, "models": models})
    for example in examples:
        Decoder(text_cfg if "text" in example else cfg).decode(orjson.dumps(example), RECORD_TS)


# -- the table -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_schema_verdict_on_the_table(case: dict[str, Any]) -> None:
    """The schema accepts or rejects each example as the table says."""
    assert schema_says(case_value(case)) is case["schema"]


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_decoder_verdict_on_the_table(case: dict[str, Any]) -> None:
    """The decoder accepts each example or rejects it with the reason the table says."""
    assert decoder_says(case_value(case)) == case["decoder"]


@pytest.mark.parametrize("case", CASES["cases"], ids=CASE_IDS)
def test_schema_and_decoder_agree_on_the_table(case: dict[str, Any]) -> None:
    """Schema-invalid -> rejected for a wire reason; schema-valid -> accepted or rejected
    only for a configuration reason."""
    agree(case_value(case))


def test_the_table_covers_every_reason() -> None:
    """Each reason code the decoder has appears in the table or the text table."""
    seen = {c["decoder"] for c in CASES["cases"]} | {c["decoder"] for c in TEXT_CASES["cases"]}
    assert seen - {"ok"} == set(REASONS)


# -- every edge value of every field, one at a time -------------------------------------

DROP = object()  # stands for "field removed"
BASES: list[dict[str, Any]] = [
    {"request_id": "r1", "model": "roberta", "ts": 5, "probs": [0.25, 0.25, 0.5]},
    {"request_id": "r1", "model": "roberta", "probs": [0.5, 0.0, 0.5], "labels": LABELS},
    {"request_id": "r1", "model": "bert-base", "ts": 5, "label": "neutral"},
    {"request_id": "r1", "model": "bert-base", "ts": 5, "score": 0.5},
]
ODD = [None, True, 0, 1.5, "", "x", [], {}, [1], {"a": 1}]
EDGES: dict[str, list[Any]] = {
    "request_id": ["x" * 256, "x" * 257, "NaN", "ключ-鍵", *ODD],
    "model": ["gpt-9", "roberta", *ODD],
    "ts": [0, -1, 2**63 - 1, 2**63, 2**64, 5.0, 5.5, -0.0, 1.7e12, 1e19, *ODD],
    "probs": [
        [0.1, 0.2, 0.7],
        [0, 1, 0],
        [0.5, 0.5],
        [0.25, 0.25, 0.25, 0.25],
        [1.0],
        [-0.1, 0.4, 0.7],
        [0.2, 0.2, 0.2],
        [True, 0, 0],
        ["0.5", 0.5, 0],
        [None, 0.5, 0.5],
        *ODD,
    ],
    "labels": [
        ["positive", "neutral", "negative"],
        ["negative", "neutral"],
        ["negative", "negative", "positive"],
        ["negative", "neutral", "angry"],
        [*LABELS, "angry"],
        ["negative", 1, "positive"],
        *ODD,
    ],
    "label": [*LABELS, "angry", *ODD],
    "score": [0.0, -3, 1e300, *ODD],
    "model_version": ["v1", *ODD],
    "trace_id": ["t", *ODD],
    "extra": ODD,
}
EDGE_CASES = [
    {k: v for k, v in {**base, name: value}.items() if v is not DROP}
    for base in BASES
    for name, values in EDGES.items()
    for value in [*values, DROP]
]


def test_schema_and_decoder_agree_on_every_edge_value() -> None:
    """Each base event with one field removed or set to each edge value: the decoder and
    the schema agree as stated in the module docstring (all cases, failures listed)."""
    wrong = []
    for doc in EDGE_CASES:
        value = json.dumps(doc).encode()
        try:
            agree(value)
        except AssertionError:
            wrong.append((doc, schema_says(value), decoder_says(value)))
    assert not wrong
    assert len(EDGE_CASES) > 400


# -- generated events ------------------------------------------------------------------


@given(
    base=st.sampled_from(BASES),
    changes=st.dictionaries(st.sampled_from(sorted(EDGES)), json_values(2**65, 6, 6), max_size=3),
)
def test_schema_and_decoder_agree_on_generated_events(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    """Property: a base event with up to three fields set to any JSON value: the decoder
    and the schema agree."""
    agree(json.dumps({**base, **changes}).encode())


# -- dead-letter records ---------------------------------------------------------------


def test_the_dlq_schema_lists_every_reason() -> None:
    """The ``error`` header's enum is exactly the dead-letter reason codes: the decoder's
    (text checks included) and the record checks' (``key_mismatch``)."""
    assert set(schema("dlq.v1.json")["properties"]["error"]["enum"]) == set(DLQ_REASONS)
    assert set(REASONS) < set(DLQ_REASONS)


@pytest.mark.parametrize("case", [c for c in CASES["cases"] if c["decoder"] != "ok"][:12])
def test_the_runtimes_dead_letter_headers_match_the_schema(case: dict[str, Any]) -> None:
    """The headers the runtime puts on a dead-letter record validate against dlq.v1.json,
    and the record keeps the original value."""
    value = case_value(case)
    record = InRecord("predictions", 3, 1024, b"r1", value, RECORD_TS)
    with pytest.raises(InvalidEvent) as info:
        DECODER.decode(value, RECORD_TS)
    out = dead_letter("fusion-dlq", record, info.value)
    assert out.value == value
    headers = {name: raw.decode("utf-8") for name, raw in out.headers or []}
    DLQ.validate(headers)
    assert headers["error"] == case["decoder"]


# -- text events ---------------------------------------------------------------------------

TEXT_CASES = json.loads((REPO / "tests" / "data" / "text_prediction_cases.json").read_text("utf-8"))
CONFIG_MAX_CHARS = TEXT_CASES["config"]["fusion"]["max_text_chars"]
TEXT_NORMALISATION = TextNormalisation.of(TEXT_CASES["config"]["fusion"]["normalise"])
for _case in TEXT_CASES["cases"]:  # "LONG" stands for a text one over the wire bound
    if _case["event"].get("text") == "LONG":
        _case["event"]["text"] = "x" * (TEXT_MAX_CHARS + 1)
OWNED = [c for c in TEXT_CASES["cases"] if c["owner"] == "text_event"]
TEXT_DECODER = Decoder(build_config(TEXT_CASES["config"]))
TEXT_IDS = [c["case"] for c in TEXT_CASES["cases"]]


def text_decoder_says(value: bytes) -> str:
    """ "ok" or the reason of the decoder under the text table's configuration."""
    try:
        TEXT_DECODER.decode(value, RECORD_TS)
    except InvalidEvent as exc:
        return exc.reason
    return "ok"


def text_agree(value: bytes) -> None:
    valid, verdict = schema_says(value), text_decoder_says(value)
    if valid:
        assert verdict == "ok" or verdict in CONFIG_REASONS | {"too_large"}, (value, verdict)
    else:
        assert verdict != "ok", (value, "the decoder accepts what the schema rejects")
        assert verdict not in CONFIG_REASONS, (value, verdict)


def text_checks_say(doc: dict[str, Any]) -> str:
    """ "ok" or the reason of the text checks the decoder will call."""
    try:
        check_text_fields(doc, CONFIG_MAX_CHARS, TEXT_NORMALISATION)
    except InvalidEvent as exc:
        return exc.reason
    return "ok"


@pytest.mark.parametrize("case", TEXT_CASES["cases"], ids=TEXT_IDS)
def test_schema_verdict_on_the_text_table(case: dict[str, Any]) -> None:
    """The schema accepts or rejects each text event as the table says."""
    assert schema_says(orjson.dumps(case["event"])) is case["schema"]


@pytest.mark.parametrize("case", OWNED, ids=[c["case"] for c in OWNED])
def test_text_checks_verdict_on_the_text_table(case: dict[str, Any]) -> None:
    """The text checks accept each event or reject it with the reason the table says."""
    assert text_checks_say(case["event"]) == case["decoder"]


@pytest.mark.parametrize("case", OWNED, ids=[c["case"] for c in OWNED])
def test_schema_and_text_checks_agree(case: dict[str, Any]) -> None:
    """Schema-invalid -> rejected, never for a configuration reason; schema-valid ->
    accepted or rejected only for a configuration reason."""
    verdict = text_checks_say(case["event"])
    if case["schema"]:
        assert verdict == "ok" or verdict in TEXT_CONFIG_REASONS
    else:
        assert verdict != "ok"
        assert verdict not in TEXT_CONFIG_REASONS


@pytest.mark.parametrize("case", TEXT_CASES["cases"], ids=TEXT_IDS)
def test_decoder_verdict_on_the_text_table(case: dict[str, Any]) -> None:
    """The decoder, under the text task, accepts each text event or rejects it with the
    reason the table says (the one-of prediction kinds included)."""
    assert text_decoder_says(orjson.dumps(case["event"])) == case["decoder"]


@pytest.mark.parametrize("case", TEXT_CASES["cases"], ids=TEXT_IDS)
def test_schema_and_decoder_agree_on_the_text_table(case: dict[str, Any]) -> None:
    """Text events: schema-invalid -> rejected for a wire reason; schema-valid ->
    accepted or rejected only for a configuration reason."""
    text_agree(orjson.dumps(case["event"]))


def test_a_prediction_kind_that_does_not_fit_the_task_is_a_label_mismatch() -> None:
    """text under a classification task, and probs, label or score under the text task:
    schema-valid, rejected as label_mismatch."""
    text_event = {"request_id": "r1", "model": "roberta", "ts": 5, "text": "Paris"}
    assert decoder_says(orjson.dumps(text_event)) == "label_mismatch"
    for kind in ({"probs": [0.5, 0.5]}, {"label": "Paris"}, {"score": 0.5}):
        event = {"request_id": "r1", "model": "roberta", "ts": 5, **kind}
        assert schema_says(orjson.dumps(event))
        assert text_decoder_says(orjson.dumps(event)) == "label_mismatch", kind


TEXT_BASES: list[dict[str, Any]] = [
    {"request_id": "r1", "model": "roberta", "ts": 5, "text": "The cat sat."},
    {"request_id": "r1", "model": "bert-base", "text": "Paris", "confidence": 0.5},
]
TEXT_EDGES: dict[str, list[Any]] = {
    "text": ["", " ", "...", "x" * 40, "x" * 41, "東京", *ODD],
    "confidence": [0, 1, 0.5, -0.1, 1.5, 2**64, *ODD],
    "probs": [[0.5, 0.5], *ODD],
    "label": ["x", *ODD],
    "score": [0.5, *ODD],
    "labels": [["a", "b"], *ODD],
    "model": ["gpt-9", *ODD],
    "extra": ODD,
}


@given(
    base=st.sampled_from(TEXT_BASES),
    changes=st.dictionaries(
        st.sampled_from(sorted(TEXT_EDGES)),
        st.one_of(
            st.sampled_from([v for values in TEXT_EDGES.values() for v in values]),
            json_values(2**65, 4, 4),
        ),
        max_size=3,
    ),
)
def test_schema_and_decoder_agree_on_generated_text_events(
    base: dict[str, Any], changes: dict[str, Any]
) -> None:
    """Property: a text event with up to three fields set to edge values or any JSON
    value: the decoder under the text task and the schema agree."""
    text_agree(json.dumps({**base, **changes}).encode())


def test_the_text_table_covers_every_text_reason() -> None:
    """Each text reason code appears in the table."""
    assert set(TEXT_REASONS) <= {c["decoder"] for c in TEXT_CASES["cases"]}


@given(st.one_of(json_values(2**65, 4, 4), st.text(max_size=60)), st.none() | json_values(2, 2, 2))
def test_schema_and_text_checks_agree_on_generated_fields(text: Any, confidence: Any) -> None:
    """Property: any JSON value as text (and as confidence, or none): the schema and the
    text checks agree as above."""
    doc: dict[str, Any] = {"request_id": "r1", "model": "roberta", "ts": 5, "text": text}
    if confidence is not None:
        doc["confidence"] = confidence
    valid, verdict = schema_says(json.dumps(doc).encode()), text_checks_say(doc)
    if valid:
        assert verdict == "ok" or verdict in TEXT_CONFIG_REASONS, (doc, verdict)
    else:
        assert verdict != "ok", (doc, "the text checks accept what the schema rejects")
        assert verdict not in TEXT_CONFIG_REASONS, (doc, verdict)


def test_the_fused_text_example_validates() -> None:
    """fused.v1.json accepts its text example and refuses a text result with a label."""
    fused = Draft202012Validator(schema("fused.v1.json"))
    example = next(e for e in schema("fused.v1.json")["examples"] if "text" in e)
    fused.validate(example)
    assert not fused.is_valid({**example, "label": "x"})
    assert not fused.is_valid({**example, "agreement": None})
