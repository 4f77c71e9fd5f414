"""Source offset tracking of a ``JoinTable`` for the at-least-once commit. Pure code.

Two questions: the smallest offset, per source, of an event of a still-pending request
(``oldest``: at-least-once commits below it), and the (first, last) offsets per source of
the events a request was fused from (``spans``: the commit never lands inside one,
worker/offsets.py).

A request keeps the marks of its own events in its ``_Pending`` (``source``/``low``/
``high``, ``more`` for further sources). Each source keeps, in arrival order, one entry
per request mark: its offset in an ``array('q')`` and the request id in a list beside it,
16 bytes an entry instead of a tuple and a heap slot. Events of a source arrive in offset
order, so the first live entry of that order is the smallest; a re-read after a seek back
(an offset below one seen before) marks the order broken, and the next ``oldest`` sorts
the live entries once. An entry is live while its request is pending and that offset is
still the request's mark for the source; stale entries are dropped from the front by
``oldest`` and in bulk once they outnumber the live ones.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping

from worker.join_pending import _Pending

# A source's entries are rebuilt once they hold this many more than twice the live ones.
COMPACT_SLACK = 1024


class _Source:
    """The marks of one source, in arrival order from ``head`` on."""

    __slots__ = ("head", "last", "offsets", "ordered", "rids")

    def __init__(self) -> None:
        self.offsets = array("q")
        self.rids: list[str] = []
        self.head = 0
        self.last = -1  # the largest offset appended
        self.ordered = True  # offsets[head:] ascending

    def append(self, offset: int, rid: str) -> None:
        if offset < self.last:
            self.ordered = False
        else:
            self.last = offset
        self.offsets.append(offset)
        self.rids.append(rid)

    def keep(self, live: list[tuple[int, str]]) -> None:
        """Replace the entries with ``live`` (in their order)."""
        self.offsets = array("q", [o for o, _ in live])
        self.rids = [r for _, r in live]
        self.head = 0


def mark_live(p: _Pending | None, source: str, offset: int) -> bool:
    """Whether ``offset`` is still the mark of pending request ``p`` for ``source``."""
    if p is None:
        return False
    if p.source == source:
        return p.low == offset
    return p.more is not None and (m := p.more.get(source)) is not None and m[0] == offset


class OffsetTracker:
    """The per-source marks of the pending requests of one table."""

    __slots__ = ("_pending", "_sources", "entries", "tracked")

    def __init__(self, pending: Mapping[str, _Pending]) -> None:
        self._pending = pending
        self._sources: dict[str, _Source] = {}
        self.entries = 0  # entries from each source's head on, stale ones included
        self.tracked = 0  # live marks: one per (pending request, source)

    def track(self, rid: str, p: _Pending, source: str, offset: int) -> None:
        """Note an accepted event's offset in ``p``; a new smallest offset of its source
        for this request becomes an entry (later events normally come at larger ones)."""
        if p.source is None:
            p.source = source
            p.low = p.high = offset
            self.tracked += 1
        elif p.source == source:
            if offset > p.high:
                p.high = offset
            if offset >= p.low:
                return
            p.low = offset  # a re-read after a seek back
        else:
            more = p.more
            if more is None:
                more = p.more = {}
            mark = more.get(source)
            if mark is None:
                more[source] = [offset, offset]
                self.tracked += 1
            else:
                if offset > mark[1]:
                    mark[1] = offset
                if offset >= mark[0]:
                    return
                mark[0] = offset
        s = self._sources.get(source)
        if s is None:
            s = self._sources[source] = _Source()
        s.append(offset, rid)
        self.entries += 1

    def closed(self, p: _Pending) -> None:
        """``p`` is no longer pending (closed or replaced): its marks are stale."""
        if p.source is not None:
            self.tracked -= 1 + (len(p.more) if p.more else 0)

    def oldest(self) -> dict[str, int]:
        """Per source, the smallest offset of a pending request's event."""
        out: dict[str, int] = {}
        pending = self._pending
        for source, s in list(self._sources.items()):
            if not s.ordered:
                live = sorted(self._live(source, s))
                self.entries -= len(s.rids) - s.head - len(live)
                s.keep(live)
                s.ordered = True
                s.last = live[-1][0] if live else -1
            offsets, rids, head, n = s.offsets, s.rids, s.head, len(s.rids)
            while head < n:
                if mark_live(pending.get(rids[head]), source, offsets[head]):
                    out[source] = offsets[head]
                    break
                head += 1
            self.entries -= head - s.head
            if head == n:
                del self._sources[source]
            elif head > COMPACT_SLACK and 2 * head > n:
                del offsets[:head], rids[:head]
                s.head = 0
            else:
                s.head = head
        return out

    def compact(self) -> None:
        """Drop every stale entry once they outnumber the live ones (memory follows the
        pending requests)."""
        if self.entries <= 2 * self.tracked + COMPACT_SLACK:
            return
        for source, s in list(self._sources.items()):
            live = list(self._live(source, s))
            if live:
                s.keep(live)
            else:
                del self._sources[source]
        self.entries = sum(len(s.rids) for s in self._sources.values())

    def _live(self, source: str, s: _Source) -> list[tuple[int, str]]:
        pending = self._pending
        return [
            (offset, rid)
            for offset, rid in zip(s.offsets[s.head :], s.rids[s.head :], strict=True)
            if mark_live(pending.get(rid), source, offset)
        ]
