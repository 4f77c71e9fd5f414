"""One open request of a ``JoinTable`` (``_Pending``: its events by model position and
its times and offset marks) and the helpers that read or slim it. Pure code."""

from __future__ import annotations

from collections.abc import Sequence

from worker.events import PredictionEvent

# ``_Pending.gap`` of a request with no offset mark from its table's first source (its
# ``low`` is 0): above any Kafka offset, so that ``offset - p.low`` is never above it.
UNMARKED = 1 << 63


class _Pending(list[PredictionEvent | None]):
    """One open request: its events by model position (None: not reported yet), and
    after them, as its last item, when it opened (``opened_ms``). A list subclass, so
    the events need no second object. Its first_ts is its first member's ts
    (``JoinTable._finish``) and its deadline follows from its opening time or first ts
    (``JoinTable._deadline_of``), not slots of their own."""

    # arrival: the model positions in arrival order, as the digits (position + 1) of an
    # int in base len(models) + 1 (a small int: no extra object for a few models); it
    # has as many digits as members, so a request is complete once it reaches
    # base ** (len(models) - 1), a test that calls no event's __eq__ (``None in p`` does).
    # low/gap: the smallest offset of its events from the first source its table tracked
    # (``OffsetTracker.primary``; gap UNMARKED: none yet) and how far the largest lies above
    # it (an int below 257 is one of CPython's shared small ints, no object of its own,
    # where the largest offset would be a 32-byte int). The marks of other sources
    # (multi-topic input only) are kept by the table, not here. Three slots make the
    # object 80 bytes (pymalloc rounds to 16: four or five would take 96); the opening
    # time rides in the item array, which for an odd number of models has a spare
    # pointer's room anyway (three events and it: 32 bytes, as three events alone).
    __slots__ = ("arrival", "gap", "low")

    arrival: int
    gap: int
    low: int

    @property
    def opened_ms(self) -> int:
        """When the request opened (the ``now_ms`` of its first event)."""
        return self[-1]  # type: ignore[return-value]

    @opened_ms.setter
    def opened_ms(self, value: int) -> None:
        self[-1] = value  # type: ignore[call-overload]


def arrival_order(arrival: int, models: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """The (model name, position) pairs of a ``_Pending.arrival`` code, in arrival order."""
    positions: list[int] = []
    code, base = arrival, len(models) + 1
    while code:
        code, digit = divmod(code, base)
        positions.append(digit - 1)
    return tuple((models[i], i) for i in reversed(positions))


def _share(event: PredictionEvent, p: _Pending, base: int) -> None:
    """Slim a request's later event before it joins ``p``, to save memory while it is
    pending: its ``request_id`` becomes the earlier events' string object (equal: one
    copy per request, not one per event), and so does its ``ts`` when equal; its
    ``trace_id`` is dropped when an earlier member has one, since a result carries the
    first member's (by arrival) that has one. Its ``traceparent`` is kept: the result
    lists every member's trace id. ``base``: the table's arrival code base (len(models)
    + 1)."""
    # Each field is written once at most: a field write costs an event (a msgspec
    # struct) several reads.
    ts = event.ts
    code = p.arrival
    if code < base:  # one earlier member, the common case: no loop
        first = p[code - 1]
        assert first is not None  # its position is in the arrival code
        traced = first if first.trace_id is not None else None
        shared_ts = first.ts if first.ts == ts else None
    else:
        first = traced = shared_ts = None
        # Iterating the list is the fastest walk (a subscript of a list subclass is
        # not); its last item, the opening time, is skipped by identity.
        opened = p[-1]
        for other in p:
            if other is not None and other is not opened:
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
