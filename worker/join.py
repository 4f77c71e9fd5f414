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

Cost: ``add`` is O(1) but for a heap push per distinct deadline, ``expire`` O(k log k)
for k closed requests. Deadlines (worker/join_deadlines.py) and source offsets
(worker/join_offsets.py) are kept with lazy deletion: an entry whose request closed is
skipped when it is reached, and entries are rebuilt when stale ones outnumber the live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from worker.events import FinishedRequest, PredictionEvent
from worker.join_deadlines import Deadlines
from worker.join_fused import fused_ids
from worker.join_offsets import OffsetTracker
from worker.join_pending import UNMARKED, _Pending, _share, arrival_order
from worker.join_state import STATE_VERSION as STATE_VERSION
from worker.join_state import encode_state, export_state, pending_from_state

log = logging.getLogger(__name__)

Outcome = Literal["accepted", "duplicate", "late"]
# Given a pending request's events by model position (None: not reported), the index of
# its final label when nothing the missing members send could change it, else None
# (worker.fusion.early.EarlyDecider).
Decider = Callable[[Sequence[PredictionEvent | None]], int | None]
# How many arrival codes' member orders are cached (JoinTable._order).
_ORDERS_CACHED = 4096
# Closes between two checks whether stale deadline or offset entries are to be dropped.
_COMPACT_EVERY = 256


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
        # A new request's items: no event yet, then its opening time (see _Pending).
        self._last = len(self.models)  # that opening time's index
        self._base_digits = len(self.models) + 1
        self._empty = (None,) * self._base_digits
        # An arrival code this large has a digit for every model (see _Pending).
        self._complete = self._base_digits ** (len(self.models) - 1)
        self._orders: dict[int, tuple[tuple[str, int], ...]] = {}
        self._closes = 0  # since the last compaction check
        self._pending: dict[str, _Pending] = {}
        self._first_ts: dict[str, int] = {}  # restored requests' own (see restore)
        # Restored requests' own deadlines, where not the one _deadline_of derives.
        self._odd_deadlines: dict[str, int] = {}
        self._deadlines = Deadlines()
        self._offsets = OffsetTracker(self._pending)
        self._more = self._offsets.more  # the marks of other sources than the first
        # Per model position, the model_version string of its latest accepted event:
        # an equal later one is replaced by it, one copy per version instead of per event.
        self._versions: list[str | None] = [None] * len(self.models)
        # The ids closed lately (worker/join_fused.py).
        self._memory = fused_ids(fused_memory_count)
        self._late = self._memory.late
        self._closed: list[FinishedRequest] = []
        # Requests opened at the same base time share one deadline int object.
        self._base = -1
        self._deadline = -1

    @property
    def _offset_entries(self) -> int:
        """Source offset entries held, stale ones included (a memory bound tests read)."""
        return self._offsets.entries

    # -- the hot path -------------------------------------------------------------------

    def add(
        self, event: PredictionEvent, now_ms: int, source: str = "", offset: int = -1
    ) -> Outcome:
        """Add one decoded event. ``source``/``offset`` say where it came from (for
        ``oldest_offsets``; an offset below 0 is not tracked).

        The table owns an event it accepts: a later member of a request that stays
        pending is slimmed to share what the earlier ones hold (see ``_share``; the last
        member closes it at once, so slimming it would save no memory), and a
        model_version equal to the one its model sent before becomes that string object."""
        rid = event.request_id
        p = self._pending.get(rid)
        try:
            i = self._index[event.model]
        except KeyError:
            raise ValueError(
                f"model {event.model!r} is not one of the join's models {list(self.models)}"
            ) from None
        if p is None:
            if self._late(rid, now_ms):
                return "late"
            p = _Pending(self._empty)
            p.arrival = i + 1
            p[self._last] = now_ms  # type: ignore[call-overload]  # its opening time
            p.low = 0
            p.gap = UNMARKED
        else:
            if p[i] is not None:
                return "duplicate"
            arrival = p.arrival * self._base_digits + i + 1
            if arrival < self._complete:  # it stays pending (the last member does not)
                _share(event, p, self._base_digits)
            p.arrival = arrival
        version = event.model_version
        if version is not None:
            if version == (known := self._versions[i]):
                if version is not known:
                    event.model_version = known
            else:
                self._versions[i] = version
        p[i] = event
        opened = p.arrival <= self._base_digits
        if p.arrival >= self._complete:  # every model reported
            self._close(rid, p, now_ms, False, False, opened, source, offset)
            return "accepted"
        if self._decider is not None and self._decider(p[:-1]) is not None:
            self._close(rid, p, now_ms, False, True, opened, source, offset)
            return "accepted"
        if opened:
            self._pending[rid] = p
            # Requests opened at the same base time push one shared deadline int.
            base = event.ts if self.event_time else now_ms
            if base != self._base:
                self._base = base
                self._deadline = base + self.timeout_ms
            self._deadlines.push(self._deadline, rid)
        if offset >= 0:
            gap = offset - p.low
            if gap > p.gap and source == self._offsets.primary:
                p.gap = gap  # a later event of the request's source: the common case
            else:
                self._offsets.track(rid, p, source, offset)
        return "accepted"

    def expire(self, now_ms: int) -> None:
        """Close (``expired=True``) every pending request whose deadline <= ``now_ms``,
        earliest deadline first (equal deadlines by request_id)."""
        self._expire(now_ms, now_ms)
        self._memory.forget(now_ms)

    def close_all(self, now_ms: int) -> None:
        """End of input: close everything pending (``expired=True``), in deadline order;
        ``fused_ts`` is ``now_ms`` (live) or each request's deadline (event time)."""
        self._expire(None, now_ms)
        assert not self._pending, "a pending request without a deadline entry"

    def drain(self) -> list[FinishedRequest]:
        """The requests closed since the last drain, in closing order."""
        closed, self._closed = self._closed, []
        return closed

    def take_spans(self) -> dict[str, list[tuple[int, int]]]:
        """Per source, the offset spans of the requests closed since the last call, for
        the at-least-once commit (``OffsetTracker.take``)."""
        return self._offsets.take()

    # -- inspection ---------------------------------------------------------------------

    def __len__(self) -> int:  # pending requests
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def pending_json(self, request_ids: Iterable[str]) -> list[tuple[str, bytes]]:
        """(id, the JSON of its ``pending_state``) for each of ``request_ids`` pending."""
        states = ((rid, self.pending_state(rid)) for rid in request_ids)
        return [(rid, encode_state(state)) for rid, state in states if state is not None]

    def next_deadline_ms(self) -> int | None:
        """The earliest deadline of a pending request, or None when nothing is pending."""
        return self._deadlines.next_ms(self._deadline_live)

    def oldest_opened_ms(self) -> int | None:
        """When the oldest pending request opened (None when nothing is pending).

        The first in arrival order: exact while ``now_ms`` does not go back (stream time
        never does; a wall-clock step back only skews this gauge)."""
        return next((p.opened_ms for p in self._pending.values()), None)

    def oldest_offsets(self) -> dict[str, int]:
        """Per source, the smallest offset of an event of a still-pending request.

        Sources with nothing pending are absent. Committing below this (or the consumed
        position when absent) re-reads every event the table holds after a crash."""
        return self._offsets.oldest()

    def remember_fused(self, request_ids: Iterable[str], now_ms: int) -> int:
        """Remember ``request_ids`` as fused (by an earlier owner of the partition, read
        back from the output topic), so that their re-read events are ``late``.

        Kept like the ids this table closed: for ``fused_memory_ms`` from ``now_ms`` and
        within ``fused_memory_count``. A pending id is left alone (its own close will
        remember it). Returns how many ids are remembered."""
        if not self.fused_memory_count:
            return 0
        return self._memory.add_all(request_ids, now_ms + self.fused_memory_ms, self._pending)

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
        arrived = self._arrived(p)
        first_ts = self._first_ts.get(request_id, arrived[0][1].ts)
        deadline_ms = self._deadline_of(request_id, p)
        return export_state(
            request_id, p.opened_ms, self.models, arrived, first_ts, deadline_ms, self.deps
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Re-open a request from ``pending_state`` output (replacing a pending one with
        the same id). Raises ValueError naming the bad field for a state this table
        cannot take (another version, a model it does not know)."""
        rid, p, first_ts, deadline_ms = pending_from_state(state, self._index, self.models)
        old = self._pending.pop(rid, None)
        if old is not None:
            self._offsets.closed(rid, old)
        self._first_ts.pop(rid, None)
        self._odd_deadlines.pop(rid, None)
        if first_ts != self._arrived(p)[0][1].ts:  # its first member's model was removed
            self._first_ts[rid] = first_ts
        if p.arrival >= self._complete:
            self._finish(rid, p, p.opened_ms, False, False)
            return
        if deadline_ms != self._deadline_of(rid, p):
            self._odd_deadlines[rid] = deadline_ms
        self._pending[rid] = p
        self._deadlines.push(deadline_ms, rid)

    # -- internals ----------------------------------------------------------------------

    def _deadline_of(self, rid: str, p: _Pending) -> int:
        """A pending request's deadline: its first event's ``ts`` (event time) or its
        opening time (live), plus ``timeout_ms``; a restored one may have its own."""
        if self._odd_deadlines and (odd := self._odd_deadlines.get(rid)) is not None:
            return odd
        if self.event_time:
            first = p[self._order(p.arrival)[0][1]]
            return first.ts + self.timeout_ms  # type: ignore[union-attr]  # a member
        return p[-1] + self.timeout_ms  # type: ignore[operator]  # its opening time

    def _deadline_live(self, deadline_ms: int, rid: str) -> bool:
        p = self._pending.get(rid)
        return p is not None and self._deadline_of(rid, p) == deadline_ms

    def _expire(self, due_ms: int | None, now_ms: int) -> None:
        """Close the requests due at ``due_ms`` (all when None), then compact once."""
        pending = self._pending
        event_time = self.event_time
        # Live (and nothing restored) a deadline is the opening time + timeout_ms: inline.
        timeout = None if event_time or self._odd_deadlines else self.timeout_ms
        deadline_of = self._deadline_of
        for deadline, rids in self._deadlines.pop_due(due_ms):
            for rid in rids:
                p = pending.get(rid)
                if p is None:
                    continue
                due = deadline_of(rid, p) if timeout is None else p[-1] + timeout  # type: ignore[operator]
                if due == deadline:
                    del pending[rid]
                    self._finish(rid, p, deadline if event_time else now_ms, True, False)
        self._compact()

    def _close(
        self,
        rid: str,
        p: _Pending,
        now_ms: int,
        expired: bool,
        decided: bool,
        opened: bool,
        source: str = "",
        offset: int = -1,
    ) -> None:
        """Close ``p`` from ``add``; ``opened``: it opened with this event (not pending
        yet); ``source``/``offset``: the closing event's, when it is not tracked in ``p``."""
        if not opened:
            del self._pending[rid]
        self._finish(rid, p, now_ms, expired, decided, source, offset)
        self._closes += 1
        if self._closes >= _COMPACT_EVERY:
            self._compact()

    def _compact(self) -> None:
        # Rebuild once most entries are of closed requests: memory follows the pending.
        self._closes = 0
        self._deadlines.compact(self._pending, self._deadline_of)
        self._offsets.compact()

    def _finish(
        self,
        rid: str,
        p: _Pending,
        now_ms: int,
        expired: bool,
        decided: bool,
        source: str = "",
        offset: int = -1,
    ) -> None:
        order = self._orders.get(p.arrival)
        if order is None:
            order = self._order(p.arrival)
        # Every position of an arrival code holds an event.
        members: dict[str, PredictionEvent] = {name: p[i] for name, i in order}  # type: ignore[misc]
        first_ts = p[order[0][1]].ts  # type: ignore[union-attr]
        if self._first_ts:  # a restored request's own (see restore)
            first_ts = self._first_ts.pop(rid, first_ts)
        if self._odd_deadlines:
            self._odd_deadlines.pop(rid, None)
        opened_ms: int = p[-1]  # type: ignore[assignment]  # see _Pending
        done = FinishedRequest(rid, members, first_ts, opened_ms, now_ms, expired, decided)
        # Its offset marks become stale here (the caller took it out of _pending).
        more = self._more
        if p.gap != UNMARKED or offset >= 0 or (more and rid in more):
            self._offsets.keep(rid, p, source, offset)
        self._closed.append(done)
        if self.fused_memory_count:
            self._memory.add(rid, now_ms + self.fused_memory_ms)

    def _arrived(self, p: _Pending) -> list[tuple[int, PredictionEvent]]:
        """A request's (model position, event) pairs in arrival order."""
        return [(i, p[i]) for _, i in self._order(p.arrival)]  # type: ignore[misc]

    def _order(self, arrival: int) -> tuple[tuple[str, int], ...]:
        """The (model name, position) pairs of an arrival code, in arrival order; cached
        while few codes have been seen (at most sum of m!/(m-k)! over k: 15 for three
        models), so closing a request decodes nothing."""
        order = self._orders.get(arrival)
        if order is None:
            order = arrival_order(arrival, self.models)
            if len(self._orders) < _ORDERS_CACHED:
                self._orders[arrival] = order
        return order
