"""One open request of a ``JoinTable`` (``_Pending``: its events by model position, its
times and its offset marks) and the helpers that read or slim it. Pure code.

A million of these may be pending, so each is one gc-free ``msgspec.Struct`` of eight
fields for three models (80 bytes), the events in fields of their own (``m0``, ``m1``,
...: one struct type per model count, ``layout``) rather than in a list beside
it, and the offsets of its events as one packed int (``span``) rather than two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from worker.events import PredictionEvent

# ``_Pending.span``: the smallest offset in the high bits, the distance to the largest
# in the low ``SPAN_BITS`` (an int of two 30-bit digits while offsets stay below 2**28).
# Spans are built with ``|`` last: it allocates the digits its result needs, where a
# shift or an addition allocates one more, 4 bytes that round up to 16.
SPAN_BITS = 32
SPAN_MASK = (1 << SPAN_BITS) - 1


class _Pending(msgspec.Struct, gc=False):
    """One open request: its times and offset marks; its events are the fields ``m0``,
    ``m1``, ... of the subclass for the table's model count (``layout``), None
    while that model has not reported.

    ``gc=False``: it holds events (gc-free themselves), strings, ints and at most a
    dict of lists of ints; nothing refers back to it, so it is never part of a cycle.
    """

    # The model positions in arrival order, as the digits (position + 1) of an int in
    # base len(models) + 1 (a small int: no extra object for a few models); it has as
    # many digits as members, so a request is complete once it reaches
    # base ** (len(models) - 1).
    arrival: int
    deadline_ms: int
    opened_ms: int
    # The offsets of its events (worker/join_offsets.py): None when none was given; the
    # source (topic) they all came from, with ``span``; or, once they came from several
    # sources (or spread over 2**32 offsets), {source: [low, high]}.
    source: str | dict[str, list[int]] | None
    span: int  # (low << SPAN_BITS) | (high - low) of ``source``'s events, when a str


class Layout(NamedTuple):
    """A table's pending requests for its model count."""

    new: Any  # the ``_Pending`` subclass with an event field per model position
    fields: tuple[str, ...]  # the names of those fields, by position
    members: Callable[[_Pending], tuple[PredictionEvent | None, ...]]  # all, by position


@cache
def layout(n_models: int) -> Layout:
    """The ``Layout`` for ``n_models`` (one struct type per model count)."""
    fields = tuple(f"m{i}" for i in range(n_models))
    new = msgspec.defstruct(
        f"_Pending{n_models}",
        [(name, PredictionEvent | None, None) for name in fields],
        bases=(_Pending,),
        gc=False,
    )
    members: Any = (lambda p: (p.m0,)) if n_models == 1 else attrgetter(*fields)
    return Layout(new, fields, members)


def span_of(p: _Pending) -> tuple[int, int]:
    """The (low, high) offsets packed in ``p.span``."""
    low = p.span >> SPAN_BITS
    return low, low + (p.span & SPAN_MASK)


def arrival_order(arrival: int, models: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """The (model name, position) pairs of a ``_Pending.arrival`` code, in arrival order."""
    positions: list[int] = []
    code, base = arrival, len(models) + 1
    while code:
        code, digit = divmod(code, base)
        positions.append(digit - 1)
    return tuple((models[i], i) for i in reversed(positions))


def _share(event: PredictionEvent, members: Sequence[PredictionEvent | None]) -> None:
    """Slim a request's later event before it joins the request's ``members``, to save
    memory while it is pending: its ``request_id`` becomes the earlier events' string
    object (equal: one copy per request, not one per event), and so does its ``ts`` when
    equal; its ``trace_id`` is dropped when an earlier member has one, since a result
    carries the first member's (by arrival) that has one. Its ``traceparent`` is kept:
    the result lists every member's trace id."""
    for other in members:
        if other is not None:
            event.request_id = other.request_id
            if other.trace_id is not None:
                event.trace_id = None
            if event.ts == other.ts:
                event.ts = other.ts


def _spans(p: _Pending, source: str = "", offset: int = -1) -> dict[str, tuple[int, int]]:
    """Per source, the (first, last) offset of a request's tracked events, widened by
    the event at ``offset`` of ``source`` (the one that completed it; -1: none)."""
    out: dict[str, tuple[int, int]] = {}
    marks = p.source
    if type(marks) is str:
        out[marks] = span_of(p)
    elif marks is not None:
        assert isinstance(marks, dict)
        for other, (low, high) in marks.items():
            out[other] = (low, high)
    if offset >= 0:
        span = out.get(source)
        out[source] = (
            (offset, offset) if span is None else (min(span[0], offset), max(span[1], offset))
        )
    return out
