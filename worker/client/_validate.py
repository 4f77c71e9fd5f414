"""Check a prediction event against the wire contract before it is sent.

The worker's decoder needs a configuration (model names, labels, tolerance); a model
service does not have one, so this module checks everything ``schemas/prediction.v1.json``
states, the ``text``/``confidence`` fields of the v1.1 contract, and the few checks that do
not depend on the worker's configuration: ``probs`` sum to 1 (within ``prob_tolerance``,
the worker's default), ``labels`` as long as ``probs``, and the encoded size. A failure
raises ``InvalidPrediction`` with the reason code the worker would put in the dead-letter
header ``error`` for the same event, so a refused publish and a dead letter read alike.

Pure: no Kafka, no clock, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson

from worker.errors import InvalidEvent

REQUEST_ID_MAX_CHARS = 256
TS_MAX = 2**63 - 1
# v1.1: a text answer (translation, transcript, LLM answer) is bounded so that one event
# stays well under the worker's default max_event_bytes even in 4-byte UTF-8.
TEXT_MAX_CHARS = 65_536
PROB_TOLERANCE = 1e-3  # the worker's default [fusion] prob_tolerance
MAX_EVENT_BYTES = 1_048_576  # the worker's default [kafka] max_event_bytes
KINDS = ("probs", "label", "score", "text")
_FLOAT_INT = frozenset({float, int})
FIELDS = frozenset(
    {"request_id", "model", "ts", "labels", "model_version", "trace_id", "confidence", *KINDS}
)
# W3C Trace Context, version 00 layout: version-trace_id-parent_id-flags, lower-case hex.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class InvalidPrediction(InvalidEvent):
    """The event a model service tried to publish breaks the contract; nothing was sent.

    ``reason`` is the code the worker's dead-letter topic would carry for the same event
    (``schema``, ``negative``, ``non_finite``, ``label_mismatch``, ``not_normalised``,
    ``unknown_model``, ``too_large``, ``text_type``) or ``traceparent`` for a malformed
    trace header.
    Fix the producing code; retrying the same call fails the same way.
    """


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: object) -> bool:
    # bool is an int subclass, but JSON true is not a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(name: str, value: object) -> float:
    if not _is_number(value):
        raise InvalidPrediction("schema", f"{name} must be a number, got {_show(value)}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond a double, which JSON readers cannot hold either
        number = math.inf
    if not math.isfinite(number):
        raise InvalidPrediction("non_finite", f"{name} must be finite, got {value!r}")
    return number


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidPrediction("schema", f"{name} must be a string, got {_show(value)}")
    return value


def check_event(
    doc: Mapping[str, Any],
    *,
    prob_tolerance: float = PROB_TOLERANCE,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> bytes:
    """Validate one prediction event and return its JSON encoding (the record value).

    Raises ``InvalidPrediction`` naming the first problem found; the checks run in the
    decoder's order (wire shape, then values), so a reason does not depend on chance.
    Numbers are written as floats where the schema wants numbers, so numpy scalars and
    Python ints both encode.
    """
    if type(doc) is not dict and not isinstance(doc, Mapping):
        raise InvalidPrediction("json", f"expected a mapping, got {type(doc).__name__}")
    extra = set(doc) - FIELDS
    if extra:
        raise InvalidPrediction("schema", f"unknown field(s) {_show(sorted(map(str, extra)))}")
    out: dict[str, Any] = {}
    request_id = doc.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= REQUEST_ID_MAX_CHARS:
        raise InvalidPrediction(
            "schema",
            f"request_id must be a string of 1..{REQUEST_ID_MAX_CHARS} characters, "
            f"got {_show(request_id)}",
        )
    out["request_id"] = request_id
    out["model"] = _string("model", doc.get("model"))
    if "ts" in doc:
        out["ts"] = _ts(doc["ts"])
    present = [k for k in KINDS if k in doc]
    if len(present) != 1:
        raise InvalidPrediction(
            "schema",
            f"exactly one of {', '.join(KINDS)} is required, got {', '.join(present) or 'none'}",
        )
    kind = present[0]
    if "labels" in doc and kind != "probs":
        raise InvalidPrediction("schema", "labels is only allowed with probs")
    if "confidence" in doc and kind != "text":
        raise InvalidPrediction("schema", "confidence is only allowed with text")
    for name in ("model_version", "trace_id"):
        if name in doc:
            out[name] = _string(name, doc[name])

    if kind == "probs":
        probs = _probs(doc["probs"])
        if "labels" in doc:
            labels = _labels(doc["labels"])
            if len(labels) != len(probs):
                raise InvalidPrediction(
                    "label_mismatch",
                    f"probs has {len(probs)} values, labels has {len(labels)}",
                )
            out["labels"] = labels
        total = math.fsum(probs)
        if abs(total - 1.0) > prob_tolerance:
            raise InvalidPrediction(
                "not_normalised",
                f"probs {_show(probs)} sum to {total!r}, not 1 within {prob_tolerance}",
            )
        out["probs"] = probs
    elif kind == "label":
        out["label"] = _string("label", doc["label"])
    elif kind == "score":
        out["score"] = _finite("score", doc["score"])
    else:
        text = doc["text"]
        if not isinstance(text, str):
            # The worker's own reason for it (worker.text_event), so that both agree.
            raise InvalidPrediction("text_type", f"text must be a string, got {_show(text)}")
        if len(text) > TEXT_MAX_CHARS:
            raise InvalidPrediction(
                "schema", f"text has {len(text)} characters, more than {TEXT_MAX_CHARS}"
            )
        out["text"] = text
        if "confidence" in doc:
            confidence = _finite("confidence", doc["confidence"])
            if not 0.0 <= confidence <= 1.0:
                raise InvalidPrediction(
                    "schema", f"confidence must be in [0, 1], got {confidence!r}"
                )
            out["confidence"] = confidence
    if not out["model"]:
        # The schema allows any string, but no worker configures a model named "".
        raise InvalidPrediction("unknown_model", "model must not be empty")
    value = orjson.dumps(out)
    if len(value) > max_event_bytes:
        raise InvalidPrediction(
            "too_large", f"event of {len(value)} bytes exceeds max_event_bytes={max_event_bytes}"
        )
    return value


def _ts(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPrediction(
            "schema", f"ts must be an integer (ms since the epoch), got {_show(value)}"
        )
    if not 0 <= value <= TS_MAX:
        raise InvalidPrediction("schema", f"ts must be in [0, 2**63), got {value}")
    return value


def _float(value: float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond a double: reported as non-finite by the caller
        return math.inf


def _probs(value: object) -> list[float]:
    if hasattr(value, "tolist"):  # a numpy array: its Python floats
        value = value.tolist()
    if not isinstance(value, list | tuple) or len(value) < 2:
        raise InvalidPrediction(
            "schema", f"probs must be a list of at least two numbers, got {_show(value)}"
        )
    kinds = set(map(type, value))
    if kinds <= _FLOAT_INT:  # the common case, without a call per value
        probs = [_float(v) for v in value] if int in kinds else list(value)
    else:
        bad = next((v for v in value if not _is_number(v)), None)
        if bad is not None:
            raise InvalidPrediction("schema", f"probs must hold numbers, got {_show(bad)}")
        probs = [_float(v) for v in value]  # numpy scalars and other float/int subclasses
    if not all(map(math.isfinite, probs)):
        bad_value = next(p for p in probs if not math.isfinite(p))
        raise InvalidPrediction("non_finite", f"probs must be finite, got {bad_value!r}")
    if min(probs) < 0.0:
        raise InvalidPrediction("negative", f"probs must be >= 0, got {min(probs)!r}")
    return probs


def _labels(value: object) -> list[str]:
    if (
        not isinstance(value, list | tuple)
        or len(value) < 2
        or not all(isinstance(v, str) for v in value)
        or len(set(value)) != len(value)
    ):
        raise InvalidPrediction(
            "schema", f"labels must be a list of at least two distinct strings, got {_show(value)}"
        )
    return list(value)


def check_traceparent(value: str) -> bytes:
    """A W3C ``traceparent`` header value, checked; returns it as header bytes.

    Version ``ff`` and all-zero trace or parent ids are invalid by the specification.
    """
    match = _TRACEPARENT.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidPrediction(
            "traceparent",
            f"traceparent must look like 00-<32 hex>-<16 hex>-<2 hex>, got {_show(value)}",
        )
    version, trace_id, parent_id, _ = match.groups()
    if version == "ff" or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        raise InvalidPrediction(
            "traceparent", f"traceparent {value!r} has an invalid version or an all-zero id"
        )
    return value.encode("ascii")
