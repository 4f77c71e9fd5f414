"""The typed records that flow between the stages: a decoded prediction event and a
finished request (what the join hands to the fusion). Pure data, and the packed form of
the probabilities.

Neither is frozen: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, several times the cost of a plain slotted one, and one event is
built per input record. Nothing hashes them or relies on their immutability; the join
takes ownership of an event it accepts (see ``JoinTable.add``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field


def pack_probs(values: Iterable[float]) -> bytes:
    """Probabilities as ``PredictionEvent.probs`` holds them: packed float64, native byte
    order (what ``np.frombuffer(..., dtype=np.float64)`` reads)."""
    return array("d", values).tobytes()


def unpack_probs(packed: bytes) -> list[float]:
    """The Python floats of packed ``probs``, in order."""
    return array("d", packed).tolist()


@dataclass(slots=True, init=False)
class PredictionEvent:
    """One model's prediction for one request, validated and aligned to the config.

    Exactly one of ``probs``, ``label``, ``score`` and ``text`` is set:
    ``probs`` is in the configured label order (``[fusion] labels``), whatever order
    the producer used, packed as float64 (``pack_probs``/``unpack_probs``): 24 bytes for
    three labels instead of a tuple of three float objects, which matters with a million
    requests pending; ``label`` is the index of a hard prediction in that order (-1: a
    code of the model's own vocabulary that maps to no fused label, an abstention);
    ``score`` is a regression output; ``text`` is a text answer (the text task), as sent,
    with the member's own ``confidence`` in [0, 1] when it sent one.

    The constructor also takes ``probs`` as a sequence of floats and packs it.

    ``trace_id`` is the v1 body field (free text, carried into the result's ``trace_id``);
    ``traceparent`` is the record's W3C ``traceparent`` header, parsed into its version-00
    form (``worker.tracecontext``), or None when the record had no valid one. Unlike
    ``trace_id``, the join keeps every member's: the result lists each member's trace id.
    """

    request_id: str
    model: str
    ts: int  # event time, ms since the epoch (the event's ``ts`` or the record timestamp)
    probs: bytes | None
    label: int | None
    score: float | None
    model_version: str | None
    trace_id: str | None
    traceparent: str | None
    text: str | None
    confidence: float | None

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
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.ts = ts
        # The decoder passes bytes already packed; anything else is a caller's sequence.
        self.probs = probs if probs is None or type(probs) is bytes else pack_probs(probs)
        self.label = label
        self.score = score
        self.model_version = model_version
        self.trace_id = trace_id
        self.traceparent = traceparent
        self.text = text
        self.confidence = confidence


@dataclass(slots=True)
class FinishedRequest:
    """A request the join has closed: every model reported, or its deadline passed.

    ``members`` maps a configured model name to its (first) event; models absent
    from it are the missing ones. Times are on the join's clock (wall clock live,
    event time in ``fuse``/replay), in ms.
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
    # Per input source (topic), the (first, last) offset of the events it was fused
    # from; None when the caller did not give offsets (offline). Bookkeeping for the
    # commit, not part of what was fused: equality ignores it.
    spans: dict[str, tuple[int, int]] | None = field(default=None, compare=False)
