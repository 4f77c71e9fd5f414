"""schemas/label.v1.json and the label decoder (worker/labels.py) agree: the schema is
a valid draft 2020-12 schema, its examples decode, and on each case below the schema
and the decoder both accept or both reject (the decoder's config reasons aside:
``unknown_label`` and ``label_type`` depend on the configuration)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from worker.config import build_config
from worker.errors import InvalidEvent
from worker.labels import LabelDecoder

SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "label.v1.json").read_text("utf-8")
)
VALIDATOR = Draft202012Validator(SCHEMA)
CLASSES = build_config({"fusion": {"labels": ["negative", "positive"]}, "models": [{"name": "m"}]})
SCORES = build_config({"fusion": {"strategy": "weighted_average"}, "models": [{"name": "m"}]})
CONFIG_REASONS = {"unknown_label", "label_type"}

CASES: list[tuple[str, dict[str, Any] | list[Any] | str]] = [
    ("ok", {"request_id": "r", "label": "positive", "ts": 5}),
    ("ok", {"request_id": "r", "score": 1.5, "ts": 5}),
    ("ok", {"request_id": "r" * 256, "label": "negative", "ts": 0}),
    ("bad", {"request_id": "r" * 257, "label": "negative", "ts": 0}),
    ("bad", {"request_id": "", "label": "negative", "ts": 0}),
    ("bad", {"request_id": 7, "label": "negative", "ts": 0}),
    ("bad", {"request_id": "r", "ts": 0}),
    ("bad", {"request_id": "r", "label": "negative", "score": 1, "ts": 0}),
    ("bad", {"request_id": "r", "label": 1, "ts": 0}),
    ("bad", {"request_id": "r", "score": "1", "ts": 0}),
    ("bad", {"request_id": "r", "label": "negative", "ts": -1}),
    ("bad", {"request_id": "r", "label": "negative", "ts": 1.5}),
    ("bad", {"request_id": "r", "label": "negative", "ts": 0, "model": "m"}),
    ("bad", ["r", "negative"]),
]


def test_the_schema_is_valid_and_its_examples_decode() -> None:
    """A draft 2020-12 schema whose examples the decoder accepts (label or score)."""
    Draft202012Validator.check_schema(SCHEMA)
    for example in SCHEMA["examples"]:
        VALIDATOR.validate(example)
        config = CLASSES if "label" in example else SCORES
        LabelDecoder(config).decode(orjson.dumps(example), None)


@pytest.mark.parametrize(("expected", "doc"), CASES)
def test_schema_and_decoder_agree(expected: str, doc: Any) -> None:
    """Both accept a valid label event; both reject an invalid one."""
    assert VALIDATOR.is_valid(doc) == (expected == "ok")
    config = SCORES if isinstance(doc, dict) and "score" in doc else CLASSES
    if expected == "ok":
        LabelDecoder(config).decode(orjson.dumps(doc), None)
        return
    with pytest.raises(InvalidEvent) as info:
        LabelDecoder(config).decode(orjson.dumps(doc), None)
    assert info.value.reason not in CONFIG_REASONS
