"""The v1 label contract (``schemas/label.v1.json``): a labels-topic record value, or a
line of ``--labels FILE``, to a ``LabelEvent``, or ``InvalidEvent`` with a reason code.

A label event tells the true outcome of one request: ``label`` (one of the configured
labels, decoded to its index) or ``score`` (regression), and ``ts``, its event time
(absent: the record timestamp). Reasons, all in ``worker.decode.DLQ_REASONS``: ``json``,
``non_finite``, ``too_large``, ``schema``, ``unknown_label`` (a label the configuration
does not know) and ``label_type`` (a label where scores are predicted, or a score where
labels are). A record whose key is not its request_id is ``key_mismatch``.
"""

from __future__ import annotations

import math

from worker.config import Config
from worker.decode_checks import TS_MAX, _show, checked_request_id, parse_object
from worker.errors import InvalidEvent
from worker.fusion.feedback import LabelEvent

FIELDS = frozenset({"request_id", "label", "score", "ts"})


class LabelDecoder:
    """Turn label record values into ``LabelEvent``s for one configuration."""

    def __init__(self, config: Config) -> None:
        self._max_bytes = config.kafka.max_event_bytes
        self._label_index = {name: i for i, name in enumerate(config.fusion.labels)}
        self._regression = config.fusion.is_regression

    def decode(self, value: bytes | None, record_ts_ms: int | None) -> LabelEvent:
        """Parse and validate one label value. Raises InvalidEvent."""
        doc = parse_object(value, self._max_bytes)
        request_id = checked_request_id(doc, FIELDS)
        ts = doc.get("ts", record_ts_ms)
        if "ts" in doc and (type(ts) is not int or not 0 <= ts <= TS_MAX):
            raise InvalidEvent("schema", f"ts must be an integer in 0..{TS_MAX}, got {_show(ts)}")
        if type(ts) is not int or ts < 0:
            raise InvalidEvent("schema", "no ts and no record timestamp")
        if ("label" in doc) == ("score" in doc):
            raise InvalidEvent("schema", "needs exactly one of label or score")
        if "label" in doc:
            return LabelEvent(request_id, ts, label=self._label(doc["label"]))
        return LabelEvent(request_id, ts, score=self._score(doc["score"]))

    def _label(self, label: object) -> int:
        if type(label) is not str:
            raise InvalidEvent("schema", f"label must be a string, got {_show(label)}")
        if self._regression:
            raise InvalidEvent("label_type", f"label {_show(label)} but the models predict scores")
        index = self._label_index.get(label)
        if index is None:
            raise InvalidEvent(
                "unknown_label", f"label {_show(label)} is not one of {list(self._label_index)}"
            )
        return index

    def _score(self, score: object) -> float:
        if type(score) is not float and type(score) is not int:
            raise InvalidEvent("schema", f"score must be a number, got {_show(score)}")
        value = float(score)
        if not math.isfinite(value):
            raise InvalidEvent("non_finite", f"score must be finite, got {score!r}")
        if not self._regression:
            raise InvalidEvent("label_type", f"score {value!r} but the models predict labels")
        return value


def check_label_key(key: bytes | None, event: LabelEvent) -> None:
    """Raise ``key_mismatch`` unless the record's key is the label's request_id: keyed
    otherwise, it may sit on another partition than the request it labels."""
    rid = event.request_id
    if key is None or key != rid.encode():
        shown = "none" if key is None else _show(key.decode("utf-8", "replace"))
        raise InvalidEvent("key_mismatch", f"record key {shown} is not request_id {_show(rid)}")
