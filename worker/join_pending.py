"""One open request of a ``JoinTable`` (``_Pending``: its events by model position and
its times and offset marks) and the helpers that read or slim it. Pure code."""

from __future__ import annotations

from collections.abc import Sequence

from worker.events import PredictionEvent


class _Pending(list[PredictionEvent | None]):
    """One open request: its events by model position (None: not reported yet), and
    its times. A list subclass, so the events need no second object. Its first_ts is
    its first member's ts (``JoinTable._finish``), not a slot of its own."""

    # arrival: the model positions in arrival order, as the digits (position + 1) of an
    # int in base len(models) + 1 (a small int: no extra object for a few models); it
    # has as many digits as members, so a request is complete once it reaches
    # base ** (len(models) - 1), a test that calls no event's __eq__ (``None in p`` does).
    # source/low/high: the first source an event came from and the smallest and largest
    # offset of its events there; more: {source: [low, high]} for any further source
    # (multi-topic input only). See worker/join_offsets.py.
    __slots__ = (
        "arrival",
        "deadline_ms",
        "high",
        "low",
        "more",
        "opened_ms",
        "source",
    )

    arrival: int
    deadline_ms: int
    high: int
    low: int
    more: dict[str, list[int]] | None
    opened_ms: int
    source: str | None


def arrival_order(arrival: int, models: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """The (model name, position) pairs of a ``_Pending.arrival`` code, in arrival order."""
    positions: list[int] = []
    code, base = arrival, len(models) + 1
    while code:
        code, digit = divmod(code, base)
        positions.append(digit - 1)
    return tuple((models[i], i) for i in reversed(positions))


def _share(event: PredictionEvent, p: _Pending) -> None:
    """Slim a request's later event before it joins ``p``, to save memory while it is
    pending: its ``request_id`` becomes the earlier events' string object (equal: one
    copy per request, not one per event), and so does its ``ts`` when equal; its
    ``trace_id`` is dropped when an earlier member has one, since a result carries the
    first member's (by arrival) that has one. Its ``traceparent`` is kept: the result
    lists every member's trace id."""
    # Each field is written once at most: a field write costs an event (a msgspec
    # struct) several reads.
    first = traced = shared_ts = None
    ts = event.ts
    for other in p:
        if other is not None:
            if first is None:
                first = other
            if other.trace_id is not None:
                traced = other
            if shared_ts is None and other.ts == ts:
                shared_ts = other.ts
    if first is not None:
        event.request_id = first.request_id
    if traced is not None and event.trace_id is not None:
        event.trace_id = None
    if shared_ts is not None and shared_ts is not ts:
        event.ts = shared_ts


def _spans(p: _Pending, source: str = "", offset: int = -1) -> dict[str, tuple[int, int]]:
    """Per source, the (first, last) offset of a request's tracked events, widened by
    the event at ``offset`` of ``source`` (the one that completed it; -1: none)."""
    out: dict[str, tuple[int, int]] = {}
    if p.source is not None:
        out[p.source] = (p.low, p.high)
        if p.more is not None:
            for other, (low, high) in p.more.items():
                out[other] = (low, high)
    if offset >= 0:
        span = out.get(source)
        out[source] = (
            (offset, offset) if span is None else (min(span[0], offset), max(span[1], offset))
        )
    return out
