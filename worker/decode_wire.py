"""The wire form of a v1 prediction event (``schemas/prediction.v1.json``), two ways.

``WireEvent`` is the contract as a msgspec struct: ``msgspec.json.Decoder(WireEvent)``
parses a value and checks every field's type and bounds in C, the decoder's fast path.
What a struct cannot say (exactly one of ``probs``/``label``/``score``/``text``,
``labels`` only with ``probs``, ``confidence`` only with ``text``, distinct ``labels``,
a ``ts`` or a record timestamp) the fast path checks after it (``fast_ts``, ``Decoder``).

``checked_wire`` is the careful path: the same checks by hand on an orjson dict, in a
fixed order, each failure with its own reason and a detail naming the bad value. It
yields the same ``WireEvent`` the fast path would, so the configuration checks that
follow are one code for both. The fast path refuses (``msgspec.DecodeError``) whatever it
is not sure of, and the decoder then asks the careful path, so that the reason of a bad
event is always the careful path's.

Where the struct and the careful path differ by design (never in the verdict):

- ``ts`` written as an integer-valued float (``5.0``, ``1.7e12``): JSON Schema counts it
  as an integer and so does the careful path; the struct wants an integer token. Such an
  event takes the careful path.
- ``null`` for an optional field: neither accepts it (``UNSET`` marks "absent", so the
  struct's fields are not ``Optional``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from worker.decode_checks import (
    REQUEST_ID_MAX_CHARS,
    TS_MAX,
    _labels,
    _probs,
    _score,
    _show,
    checked_request_id,
)
from worker.errors import InvalidEvent
from worker.text_event import TEXT_FIELDS, TEXT_MAX_CHARS, check_confidence, check_text_type

FIELDS = frozenset(
    {"request_id", "model", "ts", "probs", "label", "score", "labels", "model_version", "trace_id"}
    | TEXT_FIELDS
)
KINDS = ("probs", "label", "score", "text")

# msgspec refuses NaN/Infinity tokens and numbers that overflow a double by itself, so a
# float field needs no bound to be finite.
_Prob = Annotated[float, Meta(ge=0.0)]


class WireEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One prediction event as sent, every field of the v1 schema; ``UNSET``: absent.

    ``gc=False``: it holds strings, floats and lists of them, never a cycle, and lives
    only while one value is decoded."""

    request_id: Annotated[str, Meta(min_length=1, max_length=REQUEST_ID_MAX_CHARS)]
    model: str
    ts: Annotated[int, Meta(ge=0, le=TS_MAX)] | UnsetType = UNSET
    probs: Annotated[list[_Prob], Meta(min_length=2)] | UnsetType = UNSET
    label: str | UnsetType = UNSET
    score: float | UnsetType = UNSET
    text: Annotated[str, Meta(max_length=TEXT_MAX_CHARS)] | UnsetType = UNSET
    confidence: Annotated[float, Meta(ge=0.0, le=1.0)] | UnsetType = UNSET
    labels: Annotated[tuple[str, ...], Meta(min_length=2)] | UnsetType = UNSET
    model_version: str | UnsetType = UNSET
    trace_id: str | UnsetType = UNSET


def wire_decoder() -> msgspec.json.Decoder[WireEvent]:
    """The fast path's parser (one per ``Decoder``, reused for every value)."""
    return msgspec.json.Decoder(WireEvent)


def checked_wire(doc: dict[str, Any], record_ts_ms: int | None) -> tuple[WireEvent, int]:
    """The careful path: the wire checks of a parsed object, in the decoder's order, and
    the event time (its ``ts``, else the record timestamp). Raises InvalidEvent."""
    request_id = checked_request_id(doc, FIELDS)
    model = doc.get("model")
    if type(model) is not str:
        raise InvalidEvent("schema", f"model must be a string, got {_show(model)}")
    ts = _ts(doc, record_ts_ms)
    kinds = [k for k in KINDS if k in doc]
    if len(kinds) != 1:
        raise InvalidEvent(
            "schema",
            "exactly one of probs, label, score, text is required, got "
            + (", ".join(kinds) or "none"),
        )
    if "labels" in doc and "probs" not in doc:
        raise InvalidEvent("schema", "labels is only allowed with probs")
    if "confidence" in doc and "text" not in doc:
        raise InvalidEvent("schema", "confidence is only allowed with text")
    model_version = doc.get("model_version", UNSET)
    if type(model_version) is not str and model_version is not UNSET:
        raise InvalidEvent("schema", f"model_version must be a string, got {_show(model_version)}")
    trace_id = doc.get("trace_id", UNSET)
    if type(trace_id) is not str and trace_id is not UNSET:
        raise InvalidEvent("schema", f"trace_id must be a string, got {_show(trace_id)}")

    # the prediction's wire checks
    fields: dict[str, Any] = {"model_version": model_version, "trace_id": trace_id}
    if "text" in doc:
        fields["text"] = check_text_type(doc["text"])
        if "confidence" in doc:
            fields["confidence"] = check_confidence(doc["confidence"])
    elif "probs" in doc:
        fields["probs"] = _probs(doc["probs"])
        if "labels" in doc:
            fields["labels"] = tuple(_labels(doc["labels"]))
    elif "label" in doc:
        label = doc["label"]
        if type(label) is not str:
            raise InvalidEvent("schema", f"label must be a string, got {_show(label)}")
        fields["label"] = label
    else:
        fields["score"] = _score(doc["score"])
    return WireEvent(request_id, model, ts, **fields), ts


def _ts(doc: dict[str, Any], record_ts_ms: int | None) -> int:
    """The event time: ``ts`` (an integer, or an integer-valued float, in [0, 2**63)),
    else the record timestamp; one below 0 is Kafka's ``NO_TIMESTAMP``, i.e. none."""
    if "ts" not in doc:
        if record_ts_ms is None or record_ts_ms < 0:
            raise InvalidEvent("schema", "no ts field and no record timestamp")
        return record_ts_ms
    ts = doc["ts"]
    kind = type(ts)
    if kind is float and ts.is_integer():
        ts = int(ts)
    elif kind is not int:
        raise InvalidEvent("schema", f"ts must be an integer (ms since the epoch), got {ts!r}")
    if not 0 <= ts <= TS_MAX:
        raise InvalidEvent("schema", f"ts must be in [0, 2**63), got {ts}")
    return int(ts)
