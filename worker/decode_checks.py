"""The wire checks of the v1 contracts that need no configuration: the prelude every
record value goes through (``parse_object``: size, JSON, an object; shared by the
prediction and the label decoders), the JSON parse error (``json`` vs. ``non_finite``)
and the shape of ``probs``, ``labels`` and ``score``. Each raises
``InvalidEvent(reason, detail)``; ``worker.decode`` runs them in the order its module doc
states."""

from __future__ import annotations

import json
import math
from typing import Any, cast

import orjson

from worker.errors import InvalidEvent

REQUEST_ID_MAX_CHARS = 256
TS_MAX = 2**63 - 1  # Kafka timestamps are int64 ms

_NUMBER = frozenset({float, int})
_STR = {str}


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _NonFinite(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _reject_constant(token: str) -> Any:
    raise _NonFinite(token)


def _checked_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NonFinite(token)
    return value


def _parse_error(value: bytes, exc: Exception) -> InvalidEvent:
    """orjson refused the text: tell non-finite numbers apart from broken JSON.

    Only runs for invalid input, so the slower standard parser costs nothing in the
    steady state; it calls back on NaN/Infinity tokens and on every float literal.
    """
    try:
        json.loads(value, parse_constant=_reject_constant, parse_float=_checked_float)
    except _NonFinite as nf:
        return InvalidEvent(
            "non_finite", f"{nf.token} is not a finite number (JSON has no NaN or Infinity)"
        )
    except (ValueError, RecursionError):
        pass
    return InvalidEvent("json", f"not valid JSON: {exc}")


def parse_object(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The JSON object a record value holds, checked in this order: a value at all
    (``json``: a tombstone), at most ``max_bytes`` long (``too_large``, before parsing, so
    a huge value costs nothing), not empty, strict JSON (``json`` or ``non_finite``), an
    object (``json``)."""
    if value is None:
        raise InvalidEvent("json", "no value (a tombstone); expected a JSON object")
    if len(value) > max_bytes:
        raise InvalidEvent(
            "too_large", f"value of {len(value)} bytes exceeds kafka.max_event_bytes={max_bytes}"
        )
    if not value:
        raise InvalidEvent("json", "empty value; expected a JSON object")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _parse_error(value, exc) from None
    if type(doc) is not dict:
        raise InvalidEvent("json", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def checked_request_id(doc: dict[str, Any], fields: frozenset[str]) -> str:
    """An event's request id, once its fields are all among ``fields`` (the schema's
    shared head of a prediction and a label). Raises InvalidEvent."""
    if not doc.keys() <= fields:
        raise InvalidEvent("schema", f"unknown field(s) {_show(sorted(doc.keys() - fields))}")
    request_id = doc.get("request_id")
    if type(request_id) is not str or not 0 < len(request_id) <= REQUEST_ID_MAX_CHARS:
        raise InvalidEvent(
            "schema",
            f"request_id must be a string of 1..{REQUEST_ID_MAX_CHARS} characters, "
            f"got {_show(request_id)}",
        )
    return request_id


def _probs(value: object) -> list[float]:
    """Wire checks of ``probs``: a list of at least two finite numbers >= 0, as floats."""
    if type(value) is not list or len(value) < 2:
        raise InvalidEvent(
            "schema", f"probs must be a list of at least two numbers, got {_show(value)}"
        )
    kinds = set(map(type, value))
    if not kinds <= _NUMBER:
        bad = next(v for v in value if type(v) not in _NUMBER)
        raise InvalidEvent("schema", f"probs must hold numbers, got {_show(bad)}")
    items = cast("list[float]", value)
    probs = [float(v) for v in items] if int in kinds else items
    # orjson yields no NaN or Infinity (it refuses them while parsing: see _parse_error),
    # so only the sign is left to check.
    if not min(probs) >= 0.0:
        bad_value = next(p for p in probs if not p >= 0.0)
        raise InvalidEvent("negative", f"probs must be >= 0, got {bad_value!r}")
    return probs


def _labels(value: object) -> list[str]:
    """Wire checks of ``labels``: a list of at least two distinct strings."""
    if (
        type(value) is not list
        or len(value) < 2
        or set(map(type, value)) != _STR
        or len(set(value)) != len(value)
    ):
        raise InvalidEvent(
            "schema", f"labels must be a list of at least two distinct strings, got {_show(value)}"
        )
    return value


def _score(value: object) -> float:
    kind = type(value)
    if kind is not float and kind is not int:
        raise InvalidEvent("schema", f"score must be a number, got {_show(value)}")
    score = float(cast("float", value))
    if not math.isfinite(score):
        raise InvalidEvent("non_finite", f"score must be finite, got {value!r}")
    return score
