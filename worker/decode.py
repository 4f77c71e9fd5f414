"""Decode one Kafka record value into a validated ``PredictionEvent`` (the v1 contract).

The wire format is ``schemas/prediction.v1.json``; this module applies it by hand
(orjson, then direct dict and type checks: no jsonschema on the hot path) and adds the
checks the schema cannot know, which depend on the configuration. A value that breaks
the contract raises ``InvalidEvent(reason, detail)``; the reason is a stable code the
runtime puts in the dead-letter header ``error`` and in a metric label.

Checks run in this order, so that the reason does not depend on chance:

1. ``too_large``   the value is longer than ``[kafka] max_event_bytes`` (before parsing).
2. ``json``        no value (tombstone), empty, not JSON, or not a JSON object.
   ``non_finite``  the text is JSON but for a ``NaN``/``Infinity`` token or a number that
                   overflows a double (orjson refuses both; RFC 8259 has no such numbers).
3. Wire checks, everything ``prediction.v1.json`` states: ``schema`` (missing or
   wrong-typed field, a field the schema does not define, none or several of
   ``probs``/``label``/``score``/``text``, ``labels`` without ``probs``, ``confidence``
   without ``text`` or outside [0, 1], request_id length, ``ts`` not an integer in
   [0, 2**63), ``text`` over the wire bound of 65,536 characters), ``negative`` (a
   probability below 0), ``text_type`` (``text`` not a string).
4. Config checks, which the schema cannot make: ``unknown_model``; ``unknown_label`` (a
   ``label`` or a ``labels`` entry that is not configured); ``label_mismatch`` (``probs``
   length differs from the label count or from ``labels``, ``labels`` not a permutation of
   the configured labels, or the prediction kind does not fit the task: ``score`` with
   labels configured, ``probs``/``label`` without, ``text`` under any task but
   ``[fusion] task = "text"``, anything but ``text`` under it); ``not_normalised``
   (|sum(probs) - 1| above ``[fusion] prob_tolerance``); ``text_too_long`` (over
   ``[fusion] max_text_chars``) and ``text_empty`` (nothing left once normalised as
   configured), the checks of ``worker.text_event``.

So a schema-invalid event never gets a config reason (``CONFIG_REASONS``), and a
schema-valid one is rejected only for one of those or ``too_large`` (a size limit, checked
before anything else). ``label_mismatch`` also covers ``probs`` and ``labels`` of
different lengths, which the schema cannot express.

Decisions:

- Unknown fields are rejected (``schema``; the schema says ``additionalProperties:
  false``): a misspelt ``lables`` is reported, not silently ignored. A producer adding a
  field needs a new schema version.
- Optional fields are absent or of their type; ``null`` is not "absent" (``schema``).
- ``ts`` may be written ``1.7e12`` or ``5.0``: JSON Schema counts an integer-valued
  number as an integer, so the decoder does too. Without ``ts`` the record timestamp is
  the event time; a record timestamp below 0 means none (Kafka's ``NO_TIMESTAMP``).
- ``probs`` are aligned to the configured label order and kept as sent (not rescaled),
  packed as float64 (see ``PredictionEvent``).
- A model with a vocabulary of its own (``[[models]] labels`` / ``label_map``) sends
  ``probs`` in its own codes (its configured order, or ``labels``: a permutation of its
  codes) and a ``label`` that is one of its codes; ``unknown_label`` and
  ``label_mismatch`` then speak of its codes. Its vector is mapped to the fused labels
  (``_ModelCodes``, rules in ``worker.vocabulary``); a label code that maps to no fused
  label is kept as ``UNMAPPED`` (-1): the member abstains.
- Model names are replaced by the configured string objects, so pending events share
  them instead of holding one copy each.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import orjson

from worker.config import Config
from worker.decode_checks import _labels, _probs, _score
from worker.decode_checks import _parse_error as _parse_error
from worker.decode_checks import _show as _show
from worker.decode_codes import _ORDER_CACHE_MAX, _ModelCodes
from worker.errors import InvalidEvent
from worker.events import PredictionEvent
from worker.fusion.text import text_normalisation
from worker.text_event import (
    TEXT_CONFIG_REASONS,
    TEXT_FIELDS,
    TEXT_REASONS,
    check_confidence,
    check_text_config,
    check_text_type,
)

log = logging.getLogger(__name__)

# Every InvalidEvent.reason the decoder raises (the DLQ header ``error``, a metric label).
REASONS: tuple[str, ...] = (
    "too_large",
    "json",
    "non_finite",
    "schema",
    "negative",
    "unknown_model",
    "unknown_label",
    "label_mismatch",
    "not_normalised",
)
REASONS += TEXT_REASONS

# Reasons about the Kafka record around a valid event, checked by the engine step
# (``check_key``): the value alone cannot show them.
RECORD_REASONS = ("key_mismatch",)
# A label event (schemas/label.v1.json, worker/labels.py) whose kind does not fit the task:
# a label when the models predict scores, or a score when they predict labels.
LABEL_REASONS = ("label_type",)
# Every reason code a dead letter can carry: the one list the metrics and the DLQ schema
# follow (a fused result too large for its topic is ``too_large`` too).
DLQ_REASONS = (*REASONS, *RECORD_REASONS, *LABEL_REASONS)
# The reasons that depend on the configuration: the schema cannot see these.
CONFIG_REASONS = frozenset({"unknown_model", "unknown_label", "label_mismatch", "not_normalised"})
CONFIG_REASONS |= TEXT_CONFIG_REASONS
FIELDS = frozenset(
    {"request_id", "model", "ts", "probs", "label", "score", "labels", "model_version", "trace_id"}
    | TEXT_FIELDS
)
REQUEST_ID_MAX_CHARS = 256
TS_MAX = 2**63 - 1  # Kafka timestamps are int64 ms
# Model versions repeat across events; sharing them saves memory while requests are pending.
_VERSION_CACHE_MAX = 4096


class Decoder:
    """Turn record values into ``PredictionEvent``s for one configuration.

    ``decode`` is called once per input record; everything that depends only on the
    configuration is prepared here.
    """

    __slots__ = (
        "_label_index",
        "_labels",
        "_max_bytes",
        "_models",
        "_n_labels",
        "_orders",
        "_pack",
        "_text",
        "_tolerance",
        "_versions",
        "_vocab",
    )

    def __init__(self, config: Config) -> None:
        self._max_bytes = config.kafka.max_event_bytes
        self._models = {name: name for name in config.model_names}
        self._labels = config.fusion.labels
        self._label_index = {name: i for i, name in enumerate(self._labels)}
        self._n_labels = len(self._labels)
        # The same layout as events.pack_probs (native float64), precompiled for the count.
        self._pack = struct.Struct(f"{self._n_labels}d").pack
        self._tolerance = config.fusion.prob_tolerance
        self._versions: dict[str, str] = {}
        self._orders: dict[tuple[str, ...], tuple[int, ...]] = {}
        # Models that report in codes of their own ([[models]] labels / label_map).
        self._vocab = {
            name: _ModelCodes(name, vocab, self._n_labels)
            for name, vocab in zip(config.model_names, config.vocabularies.models, strict=True)
            if not vocab.is_identity
        }
        fusion = config.fusion
        # The text task: (max_text_chars, normalisation) for the checks; None otherwise.
        self._text = (
            (fusion.max_text_chars, text_normalisation(fusion.strategy, fusion.normalise))
            if fusion.is_text
            else None
        )

    def decode(self, value: bytes | None, record_ts_ms: int | None) -> PredictionEvent:
        """Parse and validate one record value. Raises InvalidEvent (see the module doc)."""
        if value is None:
            raise InvalidEvent("json", "no value (a tombstone); expected a JSON object")
        if len(value) > self._max_bytes:
            raise InvalidEvent(
                "too_large",
                f"value of {len(value)} bytes exceeds kafka.max_event_bytes={self._max_bytes}",
            )
        if not value:
            raise InvalidEvent("json", "empty value; expected a JSON object")
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise _parse_error(value, exc) from None
        if type(doc) is not dict:
            raise InvalidEvent("json", f"expected a JSON object, got {type(doc).__name__}")

        # -- wire checks (prediction.v1.json) --------------------------------------------
        if not doc.keys() <= FIELDS:
            extra = sorted(doc.keys() - FIELDS)
            raise InvalidEvent("schema", f"unknown field(s) {_show(extra)}")
        request_id = doc.get("request_id")
        if type(request_id) is not str or not 0 < len(request_id) <= REQUEST_ID_MAX_CHARS:
            raise InvalidEvent(
                "schema",
                f"request_id must be a string of 1..{REQUEST_ID_MAX_CHARS} characters, "
                f"got {_show(request_id)}",
            )
        model = doc.get("model")
        if type(model) is not str:
            raise InvalidEvent("schema", f"model must be a string, got {_show(model)}")
        ts = doc.get("ts")
        if type(ts) is not int or not 0 <= ts <= TS_MAX:
            ts = self._ts(doc, record_ts_ms)
        kinds = ("probs" in doc) + ("label" in doc) + ("score" in doc) + ("text" in doc)
        if kinds != 1:
            raise InvalidEvent(
                "schema",
                "exactly one of probs, label, score, text is required, got "
                + (", ".join(k for k in ("probs", "label", "score", "text") if k in doc) or "none"),
            )
        if "labels" in doc and "probs" not in doc:
            raise InvalidEvent("schema", "labels is only allowed with probs")
        if "confidence" in doc and "text" not in doc:
            raise InvalidEvent("schema", "confidence is only allowed with text")
        model_version = doc.get("model_version")
        if model_version is not None or "model_version" in doc:
            model_version = self._version(model_version)
        trace_id = doc.get("trace_id")
        if type(trace_id) is not str and (trace_id is not None or "trace_id" in doc):
            raise InvalidEvent("schema", f"trace_id must be a string, got {_show(trace_id)}")

        # the prediction's wire checks
        raw: list[float] | None = None
        order: tuple[int, ...] | None = None
        names: list[str] | None = None
        label_name: str | None = None
        score: float | None = None
        text: str | None = None
        confidence: float | None = None
        if "text" in doc:
            text = check_text_type(doc["text"])
            if "confidence" in doc:
                confidence = check_confidence(doc["confidence"])
        elif "probs" in doc:
            raw = _probs(doc["probs"])
            if "labels" in doc:
                order = self._cached_order(doc["labels"])
                if order is None:
                    names = _labels(doc["labels"])
        elif "label" in doc:
            label_name = doc["label"]
            if type(label_name) is not str:
                raise InvalidEvent("schema", f"label must be a string, got {_show(label_name)}")
        else:
            score = _score(doc["score"])

        # -- config checks ---------------------------------------------------------------
        canonical = self._models.get(model)
        if canonical is None:
            raise InvalidEvent(
                "unknown_model",
                f"model {_show(model)} is not configured; models are {list(self._models)}",
            )
        probs: bytes | None = None
        label: int | None = None
        codes = self._vocab.get(canonical) if self._vocab else None
        if self._text is not None or text is not None:
            text = self._checked_text(text)
        elif codes is not None and raw is not None:
            probs = codes.mapped(raw, doc.get("labels"), self._tolerance, self._pack)
        elif codes is not None and label_name is not None:
            label = codes.label(label_name)
        elif raw is not None:
            probs = self._aligned(raw, order, names)
        elif label_name is not None:
            label = self._label(label_name)
        elif self._n_labels:
            raise InvalidEvent(
                "label_mismatch",
                f"score {score!r} sent but fusion.labels is set (a classification task)",
            )
        return PredictionEvent(
            request_id,
            canonical,
            ts,
            probs,
            label,
            score,
            model_version,
            trace_id,
            text=text,
            confidence=confidence,
        )

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _ts(doc: dict[str, Any], record_ts_ms: int | None) -> int:
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

    def _checked_text(self, text: str | None) -> str:
        """Config checks of the text task: a text, and only under it (``label_mismatch``),
        within ``max_text_chars`` and not empty once normalised."""
        if self._text is None:
            raise InvalidEvent("label_mismatch", 'text sent but fusion.task is not "text"')
        if text is None:
            raise InvalidEvent(
                "label_mismatch", 'probs, label or score sent but fusion.task is "text"'
            )
        return check_text_config(text, *self._text)

    def _version(self, value: object) -> str:
        if type(value) is not str:
            raise InvalidEvent("schema", f"model_version must be a string, got {_show(value)}")
        cached = self._versions.get(value)
        if cached is not None:
            return cached
        if len(self._versions) < _VERSION_CACHE_MAX:
            self._versions[value] = value
        return value

    def _aligned(
        self, raw: list[float], order: tuple[int, ...] | None, names: list[str] | None
    ) -> bytes:
        """Config checks of a probability vector; returns it packed, in the configured label
        order. ``order``: a cached alignment of the event's ``labels``; ``names``: labels not seen
        before (wire-valid), checked here."""
        if not self._n_labels:
            raise InvalidEvent(
                "label_mismatch", "probs sent but fusion.labels is empty (a regression task)"
            )
        if names is not None:
            order = self._order(names)
        if len(raw) != self._n_labels:
            raise InvalidEvent(
                "label_mismatch",
                f"probs has {len(raw)} values, "
                + (
                    f"labels has {len(order)}"
                    if order is not None
                    else f"fusion.labels has {self._n_labels} {list(self._labels)}"
                ),
            )
        if order is not None:
            raw = [raw[i] for i in order]
        if abs(sum(raw) - 1.0) > self._tolerance:
            raise InvalidEvent(
                "not_normalised",
                f"probs {_show(raw)} sum to {sum(raw)!r}, "
                f"not 1 within fusion.prob_tolerance={self._tolerance}",
            )
        return self._pack(*raw)

    def _label(self, name: str) -> int:
        if not self._n_labels:
            raise InvalidEvent(
                "label_mismatch",
                f"label {_show(name)} sent but fusion.labels is empty (a regression task)",
            )
        index = self._label_index.get(name)
        if index is None:
            raise InvalidEvent(
                "unknown_label",
                f"label {_show(name)} is not one of fusion.labels {list(self._labels)}",
            )
        return index

    def _cached_order(self, value: object) -> tuple[int, ...] | None:
        """The alignment of a ``labels`` list seen before; only valid lists are cached."""
        if type(value) is not list:
            return None
        try:
            return self._orders.get(tuple(value))
        except TypeError:  # an unhashable entry: not a valid list, the slow path says why
            return None

    def _order(self, names: list[str]) -> tuple[int, ...]:
        """Config checks of a ``labels`` list (wire-valid: distinct strings). Returns, for
        each configured label, its position in ``names``."""
        unknown = [name for name in names if name not in self._label_index]
        if unknown:
            raise InvalidEvent(
                "unknown_label",
                f"labels entries {_show(unknown)} are not in fusion.labels {list(self._labels)}",
            )
        if len(names) != self._n_labels:
            raise InvalidEvent(
                "label_mismatch",
                f"labels {_show(names)} is not a permutation of fusion.labels {list(self._labels)}",
            )
        position = {name: i for i, name in enumerate(names)}
        order = tuple(position[name] for name in self._labels)
        if len(self._orders) < _ORDER_CACHE_MAX:
            self._orders[tuple(names)] = order
        return order


def check_key(key: bytes | None, event: PredictionEvent) -> None:
    """Raise ``key_mismatch`` unless the record's Kafka key is the event's request_id:
    a record keyed otherwise may sit on another partition than its request's other
    events, which would then never be joined with it."""
    rid = event.request_id
    if key is None or key != rid.encode():
        shown = "none" if key is None else _show(key.decode("utf-8", "replace"))
        raise InvalidEvent("key_mismatch", f"record key {shown} is not request_id {_show(rid)}")
