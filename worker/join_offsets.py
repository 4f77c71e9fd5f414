"""Source offset tracking of a ``JoinTable`` for the at-least-once commit. Pure code.

Two questions: the smallest offset, per source, of an event of a still-pending request
(``oldest``: at-least-once commits below it), and the (first, last) offsets per source of
the events a request was fused from (``spans``: the commit never lands inside one,
worker/offsets.py).

A request keeps the marks of its events from the table's first source (``primary``: the
only one but for multi-topic input) in its ``_Pending`` (``low``/``gap``); the marks of
any other source are kept here, by request id (``more``), so that a request spends no
slot on them. Each source keeps, in arrival order, one entry
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

from worker.join_pending import UNMARKED, _Pending
from worker.offsets import keep_span

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


class OffsetTracker:
    """The per-source marks of the pending requests of one table."""

    __slots__ = ("_pending", "_sources", "entries", "more", "primary", "taken", "tracked")

    def __init__(self, pending: Mapping[str, _Pending]) -> None:
        self._pending = pending
        self._sources: dict[str, _Source] = {}
        self.entries = 0  # entries from each source's head on, stale ones included
        self.tracked = 0  # live marks: one per (pending request, source)
        # The first source tracked: its marks are the requests' own low/gap.
        self.primary: str | None = None
        # request id -> {source: [low, high]}, for the marks of any other source.
        self.more: dict[str, dict[str, list[int]]] = {}
        # Per source, the spans of the requests closed since ``take``.
        self.taken: dict[str, list[tuple[int, int]]] = {}

    def track(self, rid: str, p: _Pending, source: str, offset: int) -> None:
        """Note an accepted event's offset; a new smallest offset of its source for this
        request becomes an entry (later events normally come at larger ones)."""
        primary = self.primary
        if primary is None:
            primary = self.primary = source
        if source == primary:
            low = p.low
            if p.gap == UNMARKED:
                p.low = offset
                p.gap = 0
                self.tracked += 1
            else:
                if offset - low > p.gap:
                    p.gap = offset - low
                if offset >= low:
                    return
                p.gap += low - offset  # a re-read after a seek back: a new low
                p.low = offset
        else:
            more = self.more.get(rid)
            if more is None:
                more = self.more[rid] = {}
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

    def closed(self, rid: str, p: _Pending) -> dict[str, list[int]] | None:
        """``p`` is no longer pending (closed or replaced): its marks are stale. Returns
        its marks of sources other than the primary (None: none)."""
        more = self.more.pop(rid, None) if self.more else None
        self.tracked -= (p.gap != UNMARKED) + (len(more) if more else 0)
        return more

    def spans(
        self, rid: str, p: _Pending, source: str = "", offset: int = -1
    ) -> dict[str, tuple[int, int]]:
        """Per source, the (first, last) offset of the events of ``p``, which closes (its
        marks become stale, as in ``closed``), widened by the event at ``offset`` of
        ``source`` (the one that completed it; -1: none)."""
        low = p.low
        if not self.more and p.gap != UNMARKED and (offset < 0 or source == self.primary):
            # The common case, without the general merge below: one source marked the
            # request, and closed it (or nothing did: its deadline).
            self.tracked -= 1
            high = low + p.gap
            if offset > high:
                high = offset
            elif 0 <= offset < low:
                low = offset
            return {self.primary: (low, high)}  # type: ignore[dict-item]  # set by the mark
        out: dict[str, tuple[int, int]] = {}
        if p.gap != UNMARKED:
            self.tracked -= 1
            out[self.primary] = (low, low + p.gap)  # type: ignore[index]  # set by that mark
        if self.more:
            more = self.more.pop(rid, None)
            if more is not None:
                self.tracked -= len(more)
                for other, (first, last) in more.items():
                    out[other] = (first, last)
        if offset >= 0:
            span = out.get(source)
            out[source] = (
                (offset, offset) if span is None else (min(span[0], offset), max(span[1], offset))
            )
        return out

    def keep(self, rid: str, p: _Pending, source: str = "", offset: int = -1) -> None:
        """``spans`` of ``p``, which closes, kept for ``take``."""
        for src, span in self.spans(rid, p, source, offset).items():
            keep_span(self.taken.setdefault(src, []), span)

    def take(self) -> dict[str, list[tuple[int, int]]]:
        """Per source, the spans kept since the last call, in closing order, each that
        starts inside the one before merged into it (``worker.offsets.keep_span``)."""
        taken, self.taken = self.taken, {}
        return taken

    def live(self, rid: str, source: str, offset: int) -> bool:
        """Whether ``offset`` is still the mark of pending request ``rid`` for ``source``."""
        p = self._pending.get(rid)
        if p is None:
            return False
        if source == self.primary:
            return p.low == offset and p.gap != UNMARKED
        more = self.more.get(rid)
        return more is not None and (m := more.get(source)) is not None and m[0] == offset

    def oldest(self) -> dict[str, int]:
        """Per source, the smallest offset of a pending request's event."""
        out: dict[str, int] = {}
        live = self.live
        for source, s in list(self._sources.items()):
            if not s.ordered:
                kept = sorted(self._live(source, s))
                self.entries -= len(s.rids) - s.head - len(kept)
                s.keep(kept)
                s.ordered = True
                s.last = kept[-1][0] if kept else -1
            offsets, rids, head, n = s.offsets, s.rids, s.head, len(s.rids)
            while head < n:
                if live(rids[head], source, offsets[head]):
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
            kept = self._live(source, s)
            if kept:
                s.keep(kept)
            else:
                del self._sources[source]
        self.entries = sum(len(s.rids) for s in self._sources.values())

    def _live(self, source: str, s: _Source) -> list[tuple[int, str]]:
        live = self.live
        return [
            (offset, rid)
            for offset, rid in zip(s.offsets[s.head :], s.rids[s.head :], strict=True)
            if live(rid, source, offset)
        ]
