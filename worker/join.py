"""The join: collect the events of each request until every configured model reported or
the request's deadline passed. Pure code: no Kafka, no clock of its own, no globals.

The runtime keeps one ``JoinTable`` per input partition number (the input topics are
co-partitioned, so a request lives in exactly one) and drops it on revoke. Every call
takes the current time ``now_ms`` from the caller:

- live (``event_time=False``): ``now_ms`` is the wall clock at arrival; a request's
  deadline is its first event's arrival + ``timeout_ms``, so a silent model still yields
  a result on time;
- replay and ``fuse`` (``event_time=True``): ``now_ms`` is the partition's stream time
  (the largest event ts seen on it so far, computed by the caller); a request's deadline
  is its first event's own ``ts`` + ``timeout_ms``, so the same input always closes the
  same requests with the same members. An expired request's ``fused_ts`` is then its
  deadline (when event time passed it, as production would have closed it), not the
  stream time of whichever later event moved the clock on.

A request closes exactly once: at once when its last model arrives (``expired=False``),
early when a ``decider`` says its missing members cannot change the fused label
(``decided=True``), or by ``expire``/``close_all`` (``expired=True``); ``drain`` hands
the closed requests over in closing order, each with its members in arrival order. Its
id is then remembered for ``fused_memory_ms`` (on the same clock) and at most
``fused_memory_count`` ids, so a straggler (a decided request's missing member too) is
reported ``late`` instead of opening the request again.

Cost: ``add`` is O(log n) (heap pushes), ``expire`` O(k log n) for k closed requests.
Deadlines and source offsets live in heaps with lazy deletion: an entry whose request
closed is skipped when it reaches the top, and a heap is rebuilt when stale entries
outnumber the live ones.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from worker.events import FinishedRequest, PredictionEvent
from worker.join_pending import _Pending, _share, _spans, _tracked
from worker.join_state import STATE_VERSION as STATE_VERSION
from worker.join_state import export_state, pending_from_state

log = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "late"]
# Given a pending request's events by model position (None: not reported), the index of
# its final label when nothing the missing members send could change it, else None
# (worker.fusion.early.EarlyDecider).
Decider = Callable[[Sequence[PredictionEvent | None]], int | None]
# A heap is rebuilt once it holds this many entries more than twice the live ones.
_COMPACT_SLACK = 1024


class JoinTable:
    """The pending requests of one partition number.

    Parameters
    ----------
    models : the configured model names; a request is complete when each reported.
    timeout_ms : how long after its first event a request waits for the others.
    fused_memory_ms, fused_memory_count : how long and how many closed request ids
        are remembered to recognise late events.
    event_time : deadlines from the first event's ``ts`` (True) or from ``now_ms`` at
        its arrival (False); see the module docstring.
    decider : asked after each accepted event of a request still incomplete; when it
        names a label, the request closes at once with ``decided=True`` (early decision).
        None (the default): requests wait for every model or their deadline.
    deps : the configuration a ``pending_state`` depends on (labels, models, strategy,
        task), included in it as ``deps``; ``restore`` expects states already realigned
        to this table (``worker.state_deps.realign``).
    """

    def __init__(
        self,
        models: Sequence[str],
        timeout_ms: int,
        fused_memory_ms: int,
        fused_memory_count: int,
        *,
        event_time: bool = False,
        decider: Decider | None = None,
        deps: Mapping[str, Any] | None = None,
    ) -> None:
        if not models or len(set(models)) != len(models):
            raise ValueError(f"models must be distinct names, at least one; got {list(models)}")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        if fused_memory_ms < 0 or fused_memory_count < 0:
            raise ValueError(
                f"fused_memory_ms and fused_memory_count must be >= 0, "
                f"got {fused_memory_ms} and {fused_memory_count}"
            )
        self.models = tuple(models)
        self.timeout_ms = timeout_ms
        self.fused_memory_ms = fused_memory_ms
        self.fused_memory_count = fused_memory_count
        self.event_time = event_time
        self._decider = decider
        # What an exported state depends on (worker/state_deps.py), written with it.
        self.deps = dict(deps) if deps is not None else None
        self._index = {name: i for i, name in enumerate(self.models)}
        self._empty = (None,) * len(self.models)
        self._base_digits = len(self.models) + 1
        self._pending: dict[str, _Pending] = {}
        # (deadline_ms, request_id), lazily deleted: an entry is live while its request
        # is pending with that deadline. Equal deadlines close in request_id order.
        self._deadlines: list[tuple[int, str]] = []
        # per source: (offset, request_id), lazily deleted (see _offset_live)
        self._offsets: dict[str, list[tuple[int, str]]] = {}
        self._offset_entries = 0
        self._offset_tracked = 0
        # request_id -> its entry in _fused_order (expiry_ms, request_id), oldest first
        self._fused: dict[str, tuple[int, str]] = {}
        self._fused_order: deque[tuple[int, str]] = deque()
        self._closed: list[FinishedRequest] = []
        # Requests opened at the same base time share one deadline int object.
        self._base = -1
        self._deadline = -1

    # -- the hot path -------------------------------------------------------------------

    def add(
        self, event: PredictionEvent, now_ms: int, source: str = "", offset: int = -1
    ) -> Outcome:
        """Add one decoded event. ``source``/``offset`` say where it came from (for
        ``oldest_offsets``; an offset below 0 is not tracked).

        The table owns an event it accepts: a later member of a request is slimmed to
        share what the earlier ones hold (see ``_share``)."""
        rid = event.request_id
        p = self._pending.get(rid)
        try:
            i = self._index[event.model]
        except KeyError:
            raise ValueError(
                f"model {event.model!r} is not one of the join's models {list(self.models)}"
            ) from None
        if p is None:
            fused = self._fused
            if fused:
                if self._fused_order[0][0] <= now_ms:
                    self._forget(now_ms)
                # Event-time close times are not monotone (expired requests close at
                # their deadline), so an entry behind the front may be past its time.
                remembered = fused.get(rid)
                if remembered is not None and remembered[0] > now_ms:
                    return "late"
            p = _Pending(self._empty)
            p[i] = event
            p.arrival = i + 1
            base = event.ts if self.event_time else now_ms
            if base != self._base:
                self._base = base
                self._deadline = base + self.timeout_ms
            p.deadline_ms = self._deadline
            p.opened_ms = now_ms
            p.first_ts = event.ts
            p.source = None
            p.more = None
            if None not in p:  # a single configured model: complete at once
                self._finish(rid, p, now_ms, expired=False)
                if offset >= 0:
                    self._widen_last(source, offset)
                return "accepted"
            if self._decider is not None and self._decider(p) is not None:
                self._finish(rid, p, now_ms, expired=False, decided=True)
                return "accepted"
            self._pending[rid] = p
            heapq.heappush(self._deadlines, (p.deadline_ms, rid))
        else:
            if p[i] is not None:
                return "duplicate"
            _share(event, p)
            p[i] = event
            p.arrival = p.arrival * self._base_digits + i + 1
            if None not in p:
                self._close(rid, p, now_ms, expired=False)
                if offset >= 0:
                    self._widen_last(source, offset)
                return "accepted"
            if self._decider is not None and self._decider(p) is not None:
                self._close(rid, p, now_ms, expired=False, decided=True)
                return "accepted"
        if offset >= 0:
            self._track(rid, p, source, offset)
        return "accepted"

    def expire(self, now_ms: int) -> None:
        """Close (``expired=True``) every pending request whose deadline <= ``now_ms``,
        earliest deadline first (equal deadlines by request_id)."""
        heap = self._deadlines
        pending = self._pending
        while heap and heap[0][0] <= now_ms:
            deadline, rid = heapq.heappop(heap)
            p = pending.get(rid)
            if p is not None and p.deadline_ms == deadline:
                self._close(rid, p, p.deadline_ms if self.event_time else now_ms, True)
        if self._fused_order and self._fused_order[0][0] <= now_ms:
            self._forget(now_ms)

    def close_all(self, now_ms: int) -> None:
        """End of input: close everything pending (``expired=True``), in deadline order;
        ``fused_ts`` is ``now_ms`` (live) or each request's deadline (event time)."""
        heap = self._deadlines
        pending = self._pending
        while heap:
            deadline, rid = heapq.heappop(heap)
            p = pending.get(rid)
            if p is not None and p.deadline_ms == deadline:
                self._close(rid, p, p.deadline_ms if self.event_time else now_ms, True)
        assert not pending, "a pending request without a deadline entry"

    def drain(self) -> list[FinishedRequest]:
        """The requests closed since the last drain, in closing order."""
        closed, self._closed = self._closed, []
        return closed

    # -- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of pending requests."""
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def next_deadline_ms(self) -> int | None:
        """The earliest deadline of a pending request, or None when nothing is pending."""
        heap = self._deadlines
        pending = self._pending
        while heap:
            deadline, rid = heap[0]
            p = pending.get(rid)
            if p is not None and p.deadline_ms == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def oldest_opened_ms(self) -> int | None:
        """When the oldest pending request opened (None when nothing is pending).

        The first request in arrival order: exact while ``now_ms`` does not go back,
        which both clocks ensure (stream time never does; a wall-clock step back only
        skews this gauge)."""
        for p in self._pending.values():
            return p.opened_ms
        return None

    def oldest_offsets(self) -> dict[str, int]:
        """Per source, the smallest offset of an event of a still-pending request.

        Sources with nothing pending are absent. Committing below this (or the consumed
        position when absent) re-reads every event the table holds after a crash."""
        out: dict[str, int] = {}
        for source, heap in self._offsets.items():
            while heap:
                offset, rid = heap[0]
                if self._offset_live(source, offset, rid):
                    out[source] = offset
                    break
                heapq.heappop(heap)
                self._offset_entries -= 1
        return out

    def remember_fused(self, request_ids: Iterable[str], now_ms: int) -> int:
        """Remember ``request_ids`` as fused (by an earlier owner of the partition, read
        back from the output topic), so that their re-read events are ``late``.

        Kept like the ids this table closed: for ``fused_memory_ms`` from ``now_ms`` and
        within ``fused_memory_count``. A pending id is left alone (its own close will
        remember it). Returns how many ids are remembered."""
        if not self.fused_memory_count:
            return 0
        fused, order, pending = self._fused, self._fused_order, self._pending
        expiry = now_ms + self.fused_memory_ms
        n = 0
        for rid in request_ids:
            if rid in pending:
                continue
            entry = (expiry, rid)
            fused[rid] = entry
            order.append(entry)
            n += 1
        if len(fused) > self.fused_memory_count:
            self._forget(None)
        return n

    # -- state export for the exactly-once changelog ------------------------------------

    def pending_state(self, request_id: str) -> dict[str, Any] | None:
        """A JSON-ready snapshot of one pending request (None if it is not pending).

        Holds the times and the members' events as the table keeps them (``probs`` a list
        of floats, a ``label`` its index in the configured labels, no ``trace_id`` that
        ``add`` dropped), not the source offsets: under exactly-once the committed offsets
        already lie past every event of a restored request."""
        p = self._pending.get(request_id)
        if p is None:
            return None
        return export_state(request_id, p, self.models, self._arrived(p), self.deps)

    def restore(self, state: dict[str, Any]) -> None:
        """Re-open a request from ``pending_state`` output (replacing a pending one with
        the same id). Raises ValueError naming the bad field for a state this table
        cannot take (another version, a model it does not know)."""
        rid, p = pending_from_state(state, self._index, self.models)
        old = self._pending.pop(rid, None)
        if old is not None:
            self._offset_tracked -= _tracked(old)
        if None not in p:
            self._finish(rid, p, p.opened_ms, expired=False)
            return
        self._pending[rid] = p
        heapq.heappush(self._deadlines, (p.deadline_ms, rid))

    # -- internals ----------------------------------------------------------------------

    def _track(self, rid: str, p: _Pending, source: str, offset: int) -> None:
        """Remember an accepted event's offset if it is the smallest of its source for
        this request (later events of a source normally have larger offsets)."""
        if p.source is None:
            p.source = source
            p.low = p.high = offset
            self._offset_tracked += 1
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
                p.more_high = {}
            assert p.more_high is not None
            high = p.more_high.get(source)
            if high is None or offset > high:
                p.more_high[source] = offset
            low = more.get(source)
            if low is not None and offset >= low:
                return
            if low is None:
                self._offset_tracked += 1
            more[source] = offset
        heap = self._offsets.get(source)
        if heap is None:
            heap = self._offsets[source] = []
        heapq.heappush(heap, (offset, rid))
        self._offset_entries += 1

    def _widen_last(self, source: str, offset: int) -> None:
        """The event that completed the request just closed joins its span."""
        done = self._closed[-1]
        spans = done.spans if done.spans is not None else {}
        first, last = spans.get(source, (offset, offset))
        spans[source] = (min(first, offset), max(last, offset))
        done.spans = spans

    def _offset_live(self, source: str, offset: int, rid: str) -> bool:
        p = self._pending.get(rid)
        if p is None:
            return False
        if p.source == source:
            return p.low == offset
        return p.more is not None and p.more.get(source) == offset

    def _close(
        self, rid: str, p: _Pending, now_ms: int, expired: bool, decided: bool = False
    ) -> None:
        del self._pending[rid]
        if p.source is not None:
            self._offset_tracked -= _tracked(p)
        self._finish(rid, p, now_ms, expired, decided)
        # Rebuild a heap once most of it is entries of closed requests, so that memory
        # follows the pending requests: amortised O(1) per close.
        if len(self._deadlines) > 2 * len(self._pending) + _COMPACT_SLACK:
            pending = self._pending
            self._deadlines = [
                e
                for e in self._deadlines
                if (q := pending.get(e[1])) is not None and q.deadline_ms == e[0]
            ]
            heapq.heapify(self._deadlines)
        if self._offset_entries > 2 * self._offset_tracked + _COMPACT_SLACK:
            self._compact_offsets()

    def _finish(
        self, rid: str, p: _Pending, now_ms: int, expired: bool, decided: bool = False
    ) -> None:
        models = self.models
        members = {models[i]: ev for i, ev in self._arrived(p)}
        done = FinishedRequest(rid, members, p.first_ts, p.opened_ms, now_ms, expired, decided)
        if p.source is not None:
            done.spans = _spans(p)
        self._closed.append(done)
        if self.fused_memory_count:
            entry = (now_ms + self.fused_memory_ms, rid)
            self._fused[rid] = entry
            self._fused_order.append(entry)
            if len(self._fused) > self.fused_memory_count:
                self._forget(None)

    def _arrived(self, p: _Pending) -> list[tuple[int, PredictionEvent]]:
        """A request's (model position, event) pairs in arrival order."""
        out: list[tuple[int, PredictionEvent]] = []
        code, base = p.arrival, self._base_digits
        while code:
            code, digit = divmod(code, base)
            ev = p[digit - 1]
            assert ev is not None
            out.append((digit - 1, ev))
        out.reverse()
        return out

    def _forget(self, now_ms: int | None) -> None:
        """Drop remembered ids past their time (``now_ms``) or beyond the count bound."""
        fused, order, limit = self._fused, self._fused_order, self.fused_memory_count
        while order and (len(fused) > limit or (now_ms is not None and order[0][0] <= now_ms)):
            entry = order.popleft()
            # The id may have been closed again since (after an earlier forget): keep that.
            if fused.get(entry[1]) is entry:
                del fused[entry[1]]

    def _compact_offsets(self) -> None:
        offsets: dict[str, list[tuple[int, str]]] = {}
        for source, heap in self._offsets.items():
            live = [e for e in heap if self._offset_live(source, e[0], e[1])]
            if live:
                heapq.heapify(live)
                offsets[source] = live
        self._offsets = offsets
        self._offset_entries = sum(len(h) for h in offsets.values())
