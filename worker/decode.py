"""Decode one Kafka record value into a validated ``PredictionEvent`` (the v1 contract).

The wire format is ``schemas/prediction.v1.json``; this module applies it (no jsonschema
on the hot path) and adds the checks the schema cannot know, which depend on the
configuration. A value that breaks the contract raises ``InvalidEvent(reason, detail)``;
the reason is a stable code the runtime puts in the dead-letter header ``error`` and in
a metric label.

Two paths, one verdict (``worker.decode_wire``): the fast path parses straight into a
typed msgspec struct (types and bounds checked in C) and is the one valid events take;
whatever it refuses or is not sure of goes to the careful path (orjson, then checks by
hand in the order below), which finds the reason and words the detail. The
configuration checks that follow are the same code for both.

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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
from msgspec import UNSET, UnsetType

from worker.config import Config
from worker.decode_checks import REQUEST_ID_MAX_CHARS as REQUEST_ID_MAX_CHARS
from worker.decode_checks import TS_MAX as TS_MAX
from worker.decode_checks import _show, parse_object
from worker.decode_codes import _ORDER_CACHE_MAX, _ModelCodes
from worker.decode_wire import FIELDS as FIELDS
from worker.decode_wire import WireEvent, checked_wire, wire_decoder
from worker.errors import InvalidEvent
from worker.events import LabelEvent, PredictionEvent, ProbsEvent, ScoreEvent, TextEvent
from worker.fusion.text import text_normalisation
from worker.native import FastDecoder, Run
from worker.text_event import TEXT_CONFIG_REASONS, TEXT_REASONS, check_text_config

if TYPE_CHECKING:  # only a type: worker.records imports the fusion, which imports config
    from worker.records import RawRecord

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
# Model versions repeat across events; sharing them saves memory while requests are pending.
_VERSION_CACHE_MAX = 4096


class Decoder:
    """Turn record values into ``PredictionEvent``s for one configuration.

    ``decode`` is called once per input record; everything that depends only on the
    configuration is prepared here.
    """

    __slots__ = (
        "_fast",
        "_label_index",
        "_labels",
        "_max_bytes",
        "_models",
        "_n_labels",
        "_orders",
        "_pack",
        "_parse",
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
        self._parse = wire_decoder().decode
        # The compiled decoder (worker.native) of a classification task's common event,
        # from the models that report in the fused labels; None: Python alone.
        self._fast = (
            FastDecoder(
                {m: m for m in self._models if m not in self._vocab},
                self._label_index,
                self._n_labels,
                self._tolerance,
                self._max_bytes,
                ProbsEvent,
                LabelEvent,
            )
            if FastDecoder is not None and self._n_labels and self._text is None
            else None
        )

    def decode_many(
        self, records: Sequence[RawRecord], check_keys: bool
    ) -> list[PredictionEvent | None] | None:
        """The compiled decoder over a batch of records (one call): each record's event,
        or None where ``decode`` (and, with ``check_keys``, ``check_key``) must decide.
        None where the compiled decoder is not installed or not for this configuration.
        It takes a classification task's common event (a probs vector in the configured
        label order, or a configured label, from a model that reports in the fused
        labels), and gives what ``decode`` gives for it; the rest, with every reason code,
        stays Python's."""
        if self._fast is None:
            return None
        # A fetched run (worker/runtime/raw_records.py) is read in place.
        batch = records if type(records) in (list, Run) else list(records)
        events: list[PredictionEvent | None] = self._fast.decode_many(batch, check_keys)
        return events

    def decode(self, value: bytes | None, record_ts_ms: int | None) -> PredictionEvent:
        """Parse and validate one record value. Raises InvalidEvent (see the module doc).

        The fast path: a value within the size limit parsed into a ``WireEvent``, then the
        wire rules a struct cannot state. Anything else, the careful path decides."""
        if value and len(value) <= self._max_bytes:
            try:
                wire = self._parse(value)
            except msgspec.DecodeError:  # ValidationError included
                return self.decode_careful(value, record_ts_ms)
            # The wire rules a struct cannot state: exactly one prediction kind, ``labels``
            # only with ``probs`` and distinct, ``confidence`` only with ``text``, a ts.
            probs, labels, text = wire.probs, wire.labels, wire.text
            kinds = (
                (probs is not UNSET)
                + (wire.label is not UNSET)
                + (wire.score is not UNSET)
                + (text is not UNSET)
            )
            ts = wire.ts
            if ts is UNSET and record_ts_ms is not None and record_ts_ms >= 0:
                ts = record_ts_ms
            if (
                kinds == 1
                and ts is not UNSET
                and (
                    labels is UNSET
                    or (
                        probs is not UNSET
                        and (labels in self._orders or len(set(labels)) == len(labels))
                    )
                )
                and (wire.confidence is UNSET or text is not UNSET)
            ):
                return self._event(wire, ts)
        return self.decode_careful(value, record_ts_ms)

    def decode_careful(self, value: bytes | None, record_ts_ms: int | None) -> PredictionEvent:
        """The careful path alone: orjson, every wire check by hand in the order of the
        module doc, then the configuration checks. Gives what ``decode`` gives, slower;
        ``decode`` takes it for whatever its fast path refuses."""
        wire, ts = checked_wire(parse_object(value, self._max_bytes), record_ts_ms)
        return self._event(wire, ts)

    def _event(self, wire: WireEvent, ts: int) -> PredictionEvent:
        """The configuration checks of a wire-valid event, and the event they give."""
        model = wire.model
        canonical = self._models.get(model)
        if canonical is None:
            raise InvalidEvent(
                "unknown_model",
                f"model {_show(model)} is not configured; models are {list(self._models)}",
            )
        version = wire.model_version
        model_version = None if version is UNSET else self._version(version)
        trace_id = None if wire.trace_id is UNSET else wire.trace_id
        rid = wire.request_id
        # No traceparent: the engine reads it from the record's headers (``traced``).
        if self._text is not None or wire.text is not UNSET:
            text = self._checked_text(None if wire.text is UNSET else wire.text)
            confidence = None if wire.confidence is UNSET else wire.confidence
            return TextEvent(rid, canonical, ts, model_version, trace_id, text, confidence)
        raw = wire.probs
        codes = self._vocab.get(canonical) if self._vocab else None
        if raw is not UNSET:
            labels = wire.labels
            if codes is not None:
                names = None if labels is UNSET else labels
                probs = codes.mapped(raw, names, self._tolerance, self._pack)
            elif (
                labels is UNSET
                and len(raw) == self._n_labels
                and abs(sum(raw) - 1.0) <= self._tolerance
            ):  # the common case, spared a call; _aligned does it all and words the errors
                probs = self._pack(*raw)
            else:
                probs = self._aligned(raw, labels)
            return ProbsEvent(rid, canonical, ts, model_version, trace_id, probs)
        if wire.label is not UNSET:
            label = self._label(wire.label) if codes is None else codes.label(wire.label)
            return LabelEvent(rid, canonical, ts, model_version, trace_id, label)
        score = wire.score
        if self._n_labels:
            raise InvalidEvent(
                "label_mismatch",
                f"score {score!r} sent but fusion.labels is set (a classification task)",
            )
        assert score is not UNSET  # a wire-valid event has exactly one kind
        return ScoreEvent(rid, canonical, ts, model_version, trace_id, score)

    # -- helpers ------------------------------------------------------------------------

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

    def _version(self, value: str) -> str:
        cached = self._versions.get(value)
        if cached is not None:
            return cached
        if len(self._versions) < _VERSION_CACHE_MAX:
            self._versions[value] = value
        return value

    def _aligned(self, raw: list[float], labels: tuple[str, ...] | UnsetType) -> bytes:
        """Config checks of a probability vector; returns it packed, in the configured label
        order. ``labels``: the event's label order (wire-valid: distinct strings), checked
        here unless its alignment is cached."""
        if not self._n_labels:
            raise InvalidEvent(
                "label_mismatch", "probs sent but fusion.labels is empty (a regression task)"
            )
        order = None
        if labels is not UNSET:
            order = self._orders.get(labels)
            if order is None:
                order = self._order(list(labels))
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
