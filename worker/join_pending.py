"""One open request of a ``JoinTable`` (``_Pending``: its events by model position and
its times and offsets) and the helpers that read or slim it. Pure code."""

from __future__ import annotations

from worker.events import PredictionEvent


class _Pending(list[PredictionEvent | None]):
    """One open request: its events by model position (None: not reported yet), and
    its times. A list subclass, so the events need no second object."""

    # arrival: the model positions in arrival order, as the digits (position + 1) of an
    # int in base len(models) + 1 (a small int: no extra object for a few models).
    # source/low: the first source an event came from and the smallest offset tracked
    # for it; more: the same for any further source (multi-topic input only).
    # high/more_high: the largest offset of each source (the span a result came from).
    __slots__ = (
        "arrival",
        "deadline_ms",
        "first_ts",
        "high",
        "low",
        "more",
        "more_high",
        "opened_ms",
        "source",
    )

    arrival: int
    deadline_ms: int
    first_ts: int
    high: int
    low: int
    more: dict[str, int] | None
    more_high: dict[str, int] | None
    opened_ms: int
    source: str | None


def _share(event: PredictionEvent, p: _Pending) -> None:
    """Slim a request's later event before it joins ``p``, to save memory while it is
    pending: its ``request_id`` becomes the earlier events' string object (equal: one
    copy per request, not one per event), and its ``trace_id`` is dropped when an earlier
    member has one, since a result carries the first member's (by arrival) that has one.
    Its ``traceparent`` is kept: the result lists every member's trace id."""
    for other in p:
        if other is not None:
            event.request_id = other.request_id
            if other.trace_id is not None:
                event.trace_id = None


def _spans(p: _Pending) -> dict[str, tuple[int, int]]:
    """Per source, the (first, last) offset of a request's tracked events."""
    assert p.source is not None
    out = {p.source: (p.low, p.high)}
    if p.more is not None and p.more_high is not None:
        for source, low in p.more.items():
            out[source] = (low, p.more_high[source])
    return out


def _tracked(p: _Pending) -> int:
    """How many (source, offset) marks a request holds."""
    if p.source is None:
        return 0
    return 1 + (len(p.more) if p.more else 0)
