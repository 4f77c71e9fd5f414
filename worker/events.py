"""The typed records that flow between the stages: a decoded prediction event and a
finished request (what the join hands to the fusion). Pure data, and the packed form of
the probabilities.

A ``PredictionEvent`` is what the join holds while a request is pending, a million of
them at a time, so it is as small as a Python object gets: a ``msgspec.Struct`` with
``gc=False`` (no collector header: it holds only strings, numbers and bytes, never a
cycle) and one subclass per prediction kind, each with the field of its kind only
(``ProbsEvent.probs``, ``LabelEvent.label``, ``ScoreEvent.score``, ``TextEvent.text`` and
``confidence``); the other kinds' names read None from the base class, and so does
``traceparent`` but for the ``Traced*`` subclasses. Six fields, 64 bytes, where a slotted
dataclass of eleven took 120. It is not frozen: the join slims the events it accepts
(``JoinTable.add``); the engine swaps a decoded event for its traced form (``traced``)
when the record has a ``traceparent`` header.

``PredictionEvent(request_id, model, ts, probs=..., ...)`` keeps the one-class signature
(any sequence of floats for ``probs``) and builds the subclass of the kind given; the
decoder and the changelog restore call the subclasses directly (positional fields),
which costs a C call, not a Python ``__init__``.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec


def pack_probs(values: Iterable[float]) -> bytes:
    """Probabilities as ``PredictionEvent.probs`` holds them: packed float64, native byte
    order (what ``np.frombuffer(..., dtype=np.float64)`` reads)."""
    return array("d", values).tobytes()


def unpack_probs(packed: bytes) -> list[float]:
    """The Python floats of packed ``probs``, in order."""
    return array("d", packed).tolist()


_StructMeta: Any = type(msgspec.Struct)
_build = _StructMeta.__call__


class _EventMeta(_StructMeta):  # type: ignore[misc]
    """Calling ``PredictionEvent`` (the base class) takes the one-class signature and
    builds the subclass of the kind given."""

    def __call__(
        cls,
        request_id: str,
        model: str,
        ts: int,
        probs: bytes | Iterable[float] | None = None,
        label: int | None = None,
        score: float | None = None,
        model_version: str | None = None,
        trace_id: str | None = None,
        traceparent: str | None = None,
        text: str | None = None,
        confidence: float | None = None,
    ) -> Any:
        kinds = (probs is not None) + (label is not None) + (score is not None)
        kinds += text is not None
        if kinds > 1 or (confidence is not None and text is None):
            raise TypeError(
                "a PredictionEvent holds one of probs, label, score or text (confidence "
                f"only with text); got probs={probs!r}, label={label!r}, score={score!r}, "
                f"text={text!r}, confidence={confidence!r}"
            )
        fields: tuple[Any, ...] = (request_id, model, ts, model_version, trace_id)
        kind: type[PredictionEvent] = cls
        if probs is not None:
            kind, fields = (
                ProbsEvent,
                (*fields, probs if type(probs) is bytes else pack_probs(probs)),
            )
        elif label is not None:
            kind, fields = LabelEvent, (*fields, label)
        elif score is not None:
            kind, fields = ScoreEvent, (*fields, score)
        elif text is not None:
            kind, fields = TextEvent, (*fields, text, confidence)
        if traceparent is not None:
            return _build(_TRACED[kind], *fields, traceparent)
        return _build(kind, *fields)  # no prediction: the base class (tests build such)


class _KindMeta(_EventMeta):
    # A subclass is called with its fields in order: msgspec's own constructor in C (this
    # assignment puts the C slot back, not a Python-level call of it).
    __call__ = _StructMeta.__call__


class PredictionEvent(msgspec.Struct, gc=False, metaclass=_EventMeta):
    """One model's prediction for one request, validated and aligned to the config.

    At most one of ``probs``, ``label``, ``score`` and ``text`` is set (the decoder always
    sets one; each is the field of a subclass, the others read None):
    ``probs`` is in the configured label order (``[fusion] labels``), whatever order
    the producer used, packed as float64 (``pack_probs``/``unpack_probs``): 24 bytes for
    three labels instead of a tuple of three float objects, which matters with a million
    requests pending; ``label`` is the index of a hard prediction in that order (-1: a
    code of the model's own vocabulary that maps to no fused label, an abstention);
    ``score`` is a regression output; ``text`` is a text answer (the text task), as sent,
    with the member's own ``confidence`` in [0, 1] when it sent one.

    ``trace_id`` is the v1 body field (free text, carried into the result's ``trace_id``);
    ``traceparent`` is the record's W3C ``traceparent`` header, parsed into its version-00
    form (``worker.tracecontext``), or None when the record had no valid one. Unlike
    ``trace_id``, the join keeps every member's: the result lists each member's trace id.
    It too is the field of subclasses (``Traced*``, see ``traced``), so that an event
    without one spends no slot on it: six fields, 64 bytes.
    """

    request_id: str
    model: str
    ts: int  # event time, ms since the epoch (the event's ``ts`` or the record timestamp)
    model_version: str | None
    trace_id: str | None

    if TYPE_CHECKING:  # what calling the base class takes (_EventMeta.__call__)

        def __init__(
            self,
            request_id: str,
            model: str,
            ts: int,
            probs: bytes | Iterable[float] | None = None,
            label: int | None = None,
            score: float | None = None,
            model_version: str | None = None,
            trace_id: str | None = None,
            traceparent: str | None = None,
            text: str | None = None,
            confidence: float | None = None,
        ) -> None: ...

    # What this event is not; a subclass makes its own a field.
    probs: ClassVar[bytes | None] = None
    label: ClassVar[int | None] = None
    score: ClassVar[float | None] = None
    text: ClassVar[str | None] = None
    confidence: ClassVar[float | None] = None
    traceparent: ClassVar[str | None] = None

    def traced(self, traceparent: str) -> PredictionEvent:
        """This event with ``traceparent`` (an event of the traced subclass of its kind;
        the engine calls it for a record with a valid ``traceparent`` header)."""
        fields = msgspec.structs.astuple(self)
        kind = _TRACED.get(type(self))
        if kind is None:  # traced already: replace its traceparent
            kind, fields = type(self), fields[:-1]
        traced: PredictionEvent = _build(kind, *fields, traceparent)
        return traced


class ProbsEvent(PredictionEvent, metaclass=_KindMeta):
    """A probability vector, packed (see ``PredictionEvent``)."""

    probs: bytes  # type: ignore[misc]


class LabelEvent(PredictionEvent, metaclass=_KindMeta):
    """A hard prediction: the index of a configured label, -1 for none."""

    label: int  # type: ignore[misc]


class ScoreEvent(PredictionEvent, metaclass=_KindMeta):
    """A regression output."""

    score: float  # type: ignore[misc]


class TextEvent(PredictionEvent, metaclass=_KindMeta):
    """A text answer and the member's own confidence in it (None: not sent)."""

    text: str  # type: ignore[misc]
    confidence: float | None  # type: ignore[misc]


# The traced subclass of each kind: its fields, then ``traceparent``.


class TracedEvent(PredictionEvent, metaclass=_KindMeta):
    traceparent: str  # type: ignore[misc]


class TracedProbsEvent(ProbsEvent, metaclass=_KindMeta):
    traceparent: str  # type: ignore[misc]


class TracedLabelEvent(LabelEvent, metaclass=_KindMeta):
    traceparent: str  # type: ignore[misc]


class TracedScoreEvent(ScoreEvent, metaclass=_KindMeta):
    traceparent: str  # type: ignore[misc]


class TracedTextEvent(TextEvent, metaclass=_KindMeta):
    traceparent: str  # type: ignore[misc]


_TRACED: dict[type[PredictionEvent], type[PredictionEvent]] = {
    PredictionEvent: TracedEvent,
    ProbsEvent: TracedProbsEvent,
    LabelEvent: TracedLabelEvent,
    ScoreEvent: TracedScoreEvent,
    TextEvent: TracedTextEvent,
}


class FinishedRequest(msgspec.Struct, gc=False):
    """A request the join has closed: every model reported, or its deadline passed.

    ``members`` maps a configured model name to its (first) event; models absent
    from it are the missing ones. Times are on the join's clock (wall clock live,
    event time in ``fuse``/replay), in ms.

    A ``msgspec.Struct`` like the events: the compiled join makes one per closed
    request, and msgspec's constructor is a C call where a dataclass's ``__init__`` ran
    Python (550 ns, now 190); ``gc=False`` since it holds a dict of events, strings and
    numbers, never a cycle, so it does not count towards the collector's thresholds.
    The offsets of its events are the table's bookkeeping (``JoinTable.take_spans``),
    not part of it.
    """

    request_id: str
    members: dict[str, PredictionEvent]
    first_ts: int  # event time of the first event received
    opened_ms: int  # clock time when the first event arrived
    fused_ts: int  # clock time when the request was finished (the wire field `fused_ts`)
    expired: bool  # True: closed by the deadline, not by completion
    # True: closed early (``[join] early_decision``) because the members still missing
    # could not change the fused label; the result's status is then "decided".
    decided: bool = False
