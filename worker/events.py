"""The typed records that flow between the stages: a decoded prediction event and a
finished request (what the join hands to the fusion). Pure data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PredictionEvent:
    """One model's prediction for one request, validated and aligned to the config.

    Exactly one of ``probs``, ``label`` and ``score`` is set:
    ``probs`` is in the configured label order (``[fusion] labels``), whatever order
    the producer used; ``label`` is the index of a hard prediction in that order;
    ``score`` is a regression output.
    """

    request_id: str
    model: str
    ts: int  # event time, ms since the epoch (the event's ``ts`` or the record timestamp)
    probs: tuple[float, ...] | None = None
    label: int | None = None
    score: float | None = None
    model_version: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
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
    closed_ms: int  # clock time when the request was finished
    expired: bool  # True: closed by the deadline, not by completion
