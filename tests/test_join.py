"""The join table: completion, deadlines on both clocks, duplicates, late events, the
bounded memory of closed ids, commit offsets and state export — by example and against
a simple reference model under hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from worker.events import FinishedRequest, PredictionEvent
from worker.fusion.result import _trace_id
from worker.join import JoinTable

MODELS = ("a", "b", "c")


def ev(rid: str, model: str, ts: int = 0, **kw: Any) -> PredictionEvent:
    if not {"probs", "label", "score"} & kw.keys():
        kw["probs"] = (0.25, 0.75)
    return PredictionEvent(request_id=rid, model=model, ts=ts, **kw)


def table(
    timeout_ms: int = 100, memory_ms: int = 500, memory_count: int = 1000, **kw: Any
) -> JoinTable:
    return JoinTable(MODELS, timeout_ms, memory_ms, memory_count, **kw)


# -- completion and deadlines ----------------------------------------------------------


def test_complete_request_closes_at_once() -> None:
    """The last configured model closes the request on that add, not at the deadline."""
    t = table()
    assert t.add(ev("r", "a", 5), 10) == "accepted"
    assert t.add(ev("r", "c", 6), 11) == "accepted"
    assert t.drain() == []
    assert t.add(ev("r", "b", 7), 12) == "accepted"
    [done] = t.drain()
    assert done.request_id == "r"
    assert (done.first_ts, done.opened_ms, done.fused_ts, done.expired) == (5, 10, 12, False)
    assert len(t) == 0
    assert t.next_deadline_ms() is None


def test_deadline_closes_with_the_members_present() -> None:
    """Live clock: at arrival + timeout_ms the request closes expired with what it has."""
    t = table(timeout_ms=100)
    t.add(ev("r", "a", ts=0), 1000)
    t.add(ev("r", "b", ts=0), 1050)
    assert t.next_deadline_ms() == 1100
    t.expire(1099)
    assert t.drain() == []
    t.expire(1100)
    [done] = t.drain()
    assert set(done.members) == {"a", "b"}
    assert (done.opened_ms, done.fused_ts, done.expired) == (1000, 1100, True)


def test_event_time_deadline_counts_from_the_first_events_ts() -> None:
    """event_time=True: the deadline is the first event's ts + timeout, whatever now was."""
    t = table(timeout_ms=100, event_time=True)
    t.add(ev("r", "a", ts=500), now_ms=700)
    assert t.next_deadline_ms() == 600
    t.expire(599)
    assert t.drain() == []
    t.expire(700)
    [finished] = t.drain()
    assert (finished.first_ts, finished.opened_ms) == (500, 700)


def test_event_time_expiry_closes_at_the_deadline() -> None:
    """event_time=True: an expired request's fused_ts is its deadline, whatever stream
    time made it expire, so results do not depend on when the clock moved on."""
    t = table(timeout_ms=100, event_time=True)
    t.add(ev("r1", "a", ts=500), now_ms=500)
    t.add(ev("r2", "a", ts=550), now_ms=550)
    t.expire(5000)
    t.close_all(5000)
    assert [(d.request_id, d.fused_ts) for d in t.drain()] == [("r1", 600), ("r2", 650)]


def test_single_model_configuration_completes_on_the_first_event() -> None:
    """With one configured model every event is a complete request."""
    t = JoinTable(["only"], 100, 500, 10)
    assert t.add(ev("r", "only"), 0) == "accepted"
    [done] = t.drain()
    assert not done.expired
    assert len(t) == 0


def test_expire_closes_in_deadline_order_then_request_id() -> None:
    """Expired requests come out by deadline, equal deadlines by request_id."""
    t = table(timeout_ms=100)
    t.add(ev("z", "a"), 10)
    t.add(ev("y", "a"), 5)
    t.add(ev("x", "a"), 10)
    t.expire(1000)
    assert [d.request_id for d in t.drain()] == ["y", "x", "z"]


def test_close_all_closes_everything_pending_as_expired() -> None:
    """End of input: every pending request closes, expired, at the given time."""
    t = table()
    for rid in ("r1", "r2", "r3"):
        t.add(ev(rid, "a"), 0)
    t.close_all(5)
    done = t.drain()
    assert [d.request_id for d in done] == ["r1", "r2", "r3"]
    assert all(d.expired and d.fused_ts == 5 for d in done)
    assert len(t) == 0


def test_drain_returns_each_closed_request_once() -> None:
    """A second drain returns nothing new."""
    t = table()
    t.add(ev("r", "a"), 0)
    t.close_all(1)
    assert len(t.drain()) == 1
    assert t.drain() == []


# -- duplicates and late events --------------------------------------------------------


def test_members_keep_their_arrival_order() -> None:
    """A finished request lists its members in the order they arrived."""
    t = table()
    for m in ("c", "a", "b"):
        t.add(ev("r", m), 0)
    [done] = t.drain()
    assert list(done.members) == ["c", "a", "b"]


def test_duplicate_keeps_the_first_event() -> None:
    """A model reporting twice for a pending request: the first event is the member."""
    t = table()
    first = ev("r", "a", probs=(1.0, 0.0))
    assert t.add(first, 0) == "accepted"
    assert t.add(ev("r", "a", probs=(0.0, 1.0)), 1) == "duplicate"
    t.close_all(2)
    [done] = t.drain()
    assert done.members["a"] is first


def test_event_after_close_is_late_and_never_reopens() -> None:
    """An event for a request closed recently is late; no second result is produced."""
    t = table(memory_ms=500)
    for m in MODELS:
        t.add(ev("r", m), 0)
    assert len(t.drain()) == 1
    assert t.add(ev("r", "a"), 100) == "late"
    assert len(t) == 0
    t.close_all(200)
    assert t.drain() == []


def test_closed_ids_are_forgotten_after_fused_memory_ms() -> None:
    """Past fused_memory_ms after its close a request id opens a new request again."""
    t = table(timeout_ms=100, memory_ms=500)
    t.add(ev("r", "a"), 0)
    t.expire(100)  # closed at 100: remembered until 600
    t.drain()
    assert t.add(ev("r", "b"), 599) == "late"
    assert t.add(ev("r", "b"), 600) == "accepted"
    assert len(t) == 1


def test_closed_ids_are_bounded_by_fused_memory_count() -> None:
    """At most fused_memory_count closed ids are remembered; the oldest go first."""
    t = table(memory_ms=10**9, memory_count=2)
    for rid in ("r1", "r2", "r3"):
        t.add(ev(rid, "a"), 0)
    t.close_all(1)
    t.drain()
    assert t.add(ev("r2", "a"), 2) == "late"
    assert t.add(ev("r3", "a"), 2) == "late"
    assert t.add(ev("r1", "a"), 2) == "accepted"


def test_remembered_fused_ids_make_their_events_late() -> None:
    """Ids remembered as fused (read back at assignment) are late, never reopened."""
    t = table(memory_ms=500)
    assert t.remember_fused(["r1", "r2"], 0) == 2
    assert t.add(ev("r1", "a"), 10) == "late"
    assert t.add(ev("r2", "b"), 10) == "late"
    assert t.add(ev("r3", "a"), 10) == "accepted"
    assert len(t) == 1


def test_remembered_fused_ids_are_forgotten_after_fused_memory_ms() -> None:
    """A remembered id is kept for fused_memory_ms from when it was remembered."""
    t = table(memory_ms=500)
    t.remember_fused(["r"], 100)
    assert t.add(ev("r", "a"), 599) == "late"
    assert t.add(ev("r", "a"), 600) == "accepted"


def test_remembered_fused_ids_leave_a_pending_request_alone() -> None:
    """Remembering the id of a pending request neither closes nor blocks it."""
    t = table()
    t.add(ev("r", "a"), 0)
    assert t.remember_fused(["r"], 1) == 0
    assert t.add(ev("r", "b"), 2) == "accepted"
    assert len(t) == 1


def test_remembered_fused_ids_are_bounded_by_fused_memory_count() -> None:
    """Remembering more than fused_memory_count ids keeps only the last ones."""
    t = table(memory_ms=10**9, memory_count=2)
    t.remember_fused(["r1", "r2", "r3"], 0)
    assert t.add(ev("r1", "a"), 1) == "accepted"
    assert t.add(ev("r3", "a"), 1) == "late"


def test_unknown_model_is_a_value_error() -> None:
    """An event of a model the table does not know is a programming error, named."""
    with pytest.raises(ValueError, match="'zz'"):
        table().add(ev("r", "zz"), 0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([], 1, 1, 1), "distinct"),
        ((["a", "a"], 1, 1, 1), "distinct"),
        ((["a"], 0, 1, 1), "timeout_ms"),
        ((["a"], 1, -1, 1), "fused_memory"),
    ],
)
def test_bad_arguments_are_named(args: tuple[Any, ...], match: str) -> None:
    """The constructor rejects impossible settings, naming the value."""
    with pytest.raises(ValueError, match=match):
        JoinTable(*args)


# -- inspection ------------------------------------------------------------------------


def test_oldest_opened_ms_is_the_first_pending_arrival() -> None:
    """The pending age gauge: the open time of the oldest pending request."""
    t = table(timeout_ms=100)
    assert t.oldest_opened_ms() is None
    t.add(ev("r1", "a"), 10)
    t.add(ev("r2", "a"), 20)
    assert t.oldest_opened_ms() == 10
    for m in ("b", "c"):
        t.add(ev("r1", m), 30)
    assert t.oldest_opened_ms() == 20


def test_oldest_offsets_is_the_minimum_over_pending_events_per_source() -> None:
    """Per source, the smallest offset held by a pending request; closed ones drop out."""
    t = table()
    t.add(ev("r1", "a"), 0, "in:0", 5)
    t.add(ev("r2", "a"), 0, "in:0", 6)
    t.add(ev("r2", "b"), 0, "other:0", 3)
    t.add(ev("r1", "b"), 0, "in:0", 7)
    assert t.oldest_offsets() == {"in:0": 5, "other:0": 3}
    t.add(ev("r1", "c"), 0, "in:0", 8)  # completes r1
    assert t.oldest_offsets() == {"in:0": 6, "other:0": 3}
    t.close_all(1)
    assert t.oldest_offsets() == {}


def test_oldest_offsets_follows_a_re_read_after_seek_back() -> None:
    """An event accepted at a lower offset than the request's first lowers the minimum."""
    t = table()
    t.add(ev("r", "a"), 0, "in:0", 50)
    t.add(ev("r", "b"), 0, "in:0", 20)
    assert t.oldest_offsets() == {"in:0": 20}


def test_untracked_offsets_are_absent() -> None:
    """Events added without an offset (offline) leave oldest_offsets empty."""
    t = table()
    t.add(ev("r", "a"), 0)
    assert t.oldest_offsets() == {}


def test_heaps_stay_bounded_by_the_pending_requests() -> None:
    """Entries of closed requests are dropped in bulk, so memory follows pending requests."""
    t = table(timeout_ms=10**9, memory_count=1)
    t.add(ev("keep", "a"), 0, "in:0", 0)
    for i in range(20_000):
        for j, m in enumerate(MODELS):
            t.add(ev(f"r{i}", m), 0, "in:0", 1 + 3 * i + j)
    assert len(t) == 1
    assert len(t._deadlines) < 2 * len(t) + 2000
    assert t._offset_entries < 2000
    assert t.oldest_offsets() == {"in:0": 0}


# -- what the table keeps of an event ---------------------------------------------------


def test_a_later_event_shares_the_first_events_request_id() -> None:
    """A pending request holds one request_id string, not one per event (memory)."""
    t = table()
    first = ev("req-1", "a")
    later = ev("".join(["req", "-1"]), "b")  # an equal string, another object
    assert later.request_id is not first.request_id
    t.add(first, 0)
    t.add(later, 1)
    assert later.request_id is first.request_id


def test_a_later_trace_id_is_dropped_when_an_earlier_member_has_one() -> None:
    """The result carries the first member's trace_id, so a later one is not kept."""
    t = table()
    first, later = ev("r", "a", trace_id="t1"), ev("r", "b", trace_id="t2")
    t.add(first, 0)
    t.add(later, 1)
    assert (first.trace_id, later.trace_id) == ("t1", None)


def test_a_later_trace_id_is_kept_until_a_member_has_one() -> None:
    """Without a trace_id before it, a member's trace_id is the one a result would carry;
    the last member, which closes the request at once, is not slimmed (it would save no
    memory), and the result still carries the first member's that has one."""
    t = table()
    untraced, traced, last = ev("r", "a"), ev("r", "b", trace_id="t2"), ev("r", "c", trace_id="t3")
    t.add(untraced, 0)
    t.add(traced, 1)
    assert traced.trace_id == "t2"
    t.add(last, 2)
    [done] = t.drain()
    assert [e.trace_id for e in done.members.values()] == [None, "t2", "t3"]
    assert _trace_id(done.members) == "t2"


def test_a_duplicate_event_is_left_as_it_came() -> None:
    """An event the table does not accept is not slimmed: it is not the table's."""
    t = table()
    t.add(ev("r", "a", trace_id="t1"), 0)
    t.add(ev("r", "b"), 0)
    duplicate = ev("r", "b", trace_id="t2")
    assert t.add(duplicate, 1) == "duplicate"
    assert duplicate.trace_id == "t2"


# -- state export ----------------------------------------------------------------------


def test_pending_state_of_an_unknown_request_is_none() -> None:
    """Only pending requests have a state."""
    assert table().pending_state("nope") is None


def test_pending_state_round_trips_through_json() -> None:
    """Export, JSON, restore into a fresh table: the same request closes the same way."""
    t = table(timeout_ms=100)
    a = ev("r", "a", ts=3, probs=(0.5, 0.5), model_version="v1", trace_id="t")
    b = ev("r", "c", ts=4, label=1)
    t.add(a, 10)
    t.add(b, 11)
    state = orjson.loads(orjson.dumps(t.pending_state("r")))
    fresh = table(timeout_ms=100)
    fresh.restore(state)
    assert fresh.pending_state("r") == state
    assert fresh.next_deadline_ms() == 110
    fresh.add(ev("r", "b", score=None, probs=(0.1, 0.9)), 50)
    [done] = fresh.drain()
    assert done.members["a"] == a
    assert done.members["c"] == b
    assert (done.first_ts, done.opened_ms, done.fused_ts, done.expired) == (3, 10, 50, False)


def test_pending_state_holds_probs_as_a_list_of_floats() -> None:
    """The changelog format: probs as a JSON list of numbers, whatever the events hold."""
    t = table()
    t.add(ev("r", "a", probs=(0.25, 0.75)), 0)
    state = t.pending_state("r")
    assert state is not None
    assert state["members"]["a"]["probs"] == [0.25, 0.75]
    assert orjson.dumps(state["members"]["a"]) == b'{"ts":0,"probs":[0.25,0.75]}'


def test_restore_replaces_a_pending_request_with_the_same_id() -> None:
    """Restoring over a pending request keeps only the restored state."""
    t = table()
    t.add(ev("r", "a", ts=1), 0)
    state = t.pending_state("r")
    assert state is not None
    t.add(ev("r", "b", ts=2), 0)
    t.restore(state)
    assert t.pending_state("r") == state
    assert len(t) == 1


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"v": 99}, "version 99"),
        ({"v": 1, "request_id": "r"}, "malformed"),
        (
            {
                "v": 1,
                "request_id": "r",
                "opened_ms": 0,
                "deadline_ms": 1,
                "first_ts": 0,
                "members": {"zz": {"ts": 0, "score": 1.0}},
            },
            "'zz'",
        ),
        (
            {
                "v": 1,
                "request_id": "r",
                "opened_ms": 0,
                "deadline_ms": 1,
                "first_ts": 0,
                "members": {},
            },
            "no members",
        ),
    ],
)
def test_restore_rejects_a_state_it_cannot_take(state: dict[str, Any], match: str) -> None:
    """A state of another version, shape or model set is a ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        table().restore(state)


@given(
    members=st.dictionaries(
        st.sampled_from(MODELS[:2]),
        st.one_of(
            st.builds(lambda t: {"ts": t, "label": 1}, st.integers(0, 2**62)),
            st.builds(lambda t, s: {"ts": t, "score": s}, st.integers(0, 2**62), st.floats(-9, 9)),
            st.builds(
                lambda t, p, v: {"ts": t, "probs": [p, 1 - p], "model_version": v},
                st.integers(0, 2**62),
                st.floats(0, 1),
                st.text(max_size=5),
            ),
        ),
        min_size=1,
    ),
    opened=st.integers(0, 2**40),
)
def test_any_pending_state_survives_export_and_restore(
    members: dict[str, dict[str, Any]], opened: int
) -> None:
    """Property: for any pending request, restore(pending_state) then pending_state is
    the same JSON, and the restored events equal the originals."""
    t = table(timeout_ms=100)
    originals = {}
    for model, fields in members.items():
        e = PredictionEvent(
            request_id="r",
            model=model,
            ts=fields["ts"],
            probs=tuple(fields["probs"]) if "probs" in fields else None,
            label=fields.get("label"),
            score=fields.get("score"),
            model_version=fields.get("model_version"),
        )
        originals[model] = e
        t.add(e, opened)
    state = orjson.loads(orjson.dumps(t.pending_state("r")))
    fresh = table(timeout_ms=100)
    fresh.restore(state)
    assert fresh.pending_state("r") == state
    fresh.close_all(opened + 1)
    [done] = fresh.drain()
    assert done.members == originals
    assert list(done.members) == list(originals)  # arrival order survives


# -- the reference model ---------------------------------------------------------------


@dataclass
class _Req:
    members: dict[str, PredictionEvent]
    opened: int
    deadline: int
    first_ts: int
    offsets: list[tuple[str, int]] = field(default_factory=list)


class JoinMachine(RuleBasedStateMachine):
    """Random adds, clock steps, expiries and drains, checked step by step against a
    plain reference model; at the end every accepted event is in exactly one result."""

    @initialize(
        event_time=st.booleans(),
        timeout=st.integers(1, 50),
        memory_ms=st.integers(0, 200),
        memory_count=st.integers(0, 4),
    )
    def setup(self, event_time: bool, timeout: int, memory_ms: int, memory_count: int) -> None:
        self.t = JoinTable(MODELS, timeout, memory_ms, memory_count, event_time=event_time)
        self.event_time, self.timeout = event_time, timeout
        self.memory_ms, self.memory_count = memory_ms, memory_count
        self.now = 0
        self.offset = 0
        self.marks = 0
        self.pending: dict[str, _Req] = {}
        self.fused: list[tuple[str, int]] = []  # (request_id, expiry), oldest first
        self.expected: list[FinishedRequest] = []
        self.accepted: list[PredictionEvent] = []
        self.rejected: list[PredictionEvent] = []
        self.results: list[FinishedRequest] = []

    def _close(self, rid: str, now: int, expired: bool) -> None:
        r = self.pending.pop(rid)
        if expired and self.event_time:
            now = r.deadline
        members = dict(r.members)  # arrival order
        self.expected.append(FinishedRequest(rid, members, r.first_ts, r.opened, now, expired))
        if self.memory_count:
            self.fused = [(i, e) for i, e in self.fused if i != rid] + [(rid, now + self.memory_ms)]
            self.fused = self.fused[-self.memory_count :]

    def _remembered(self, rid: str) -> bool:
        return any(i == rid and e > self.now for i, e in self.fused)

    @rule(
        rid=st.sampled_from(["r1", "r2", "r3", "r4"]),
        model=st.sampled_from(MODELS),
        lag=st.integers(0, 60),
        source=st.sampled_from(["in:0", "in2:0"]),
        step=st.integers(0, 30),
    )
    def add(self, rid: str, model: str, lag: int, source: str, step: int) -> None:
        self.now += step
        # event time: ts at most the stream time, as the caller guarantees
        self.offset += 1
        ts = max(0, self.now - lag) if self.event_time else lag
        self.marks += 1
        # model_version: a unique mark (the table may drop a later member's trace_id)
        e = ev(rid, model, ts=ts, model_version=str(self.marks))
        outcome = self.t.add(e, self.now, source, self.offset)
        r = self.pending.get(rid)
        if r is None:
            if self._remembered(rid):
                want = "late"
            else:
                base = e.ts if self.event_time else self.now
                self.pending[rid] = _Req({model: e}, self.now, base + self.timeout, e.ts)
                self.pending[rid].offsets.append((source, self.offset))
                want = "accepted"
        elif model in r.members:
            want = "duplicate"
        else:
            r.members[model] = e
            r.offsets.append((source, self.offset))
            want = "accepted"
            if len(r.members) == len(MODELS):
                self._close(rid, self.now, expired=False)
        assert outcome == want
        (self.accepted if outcome == "accepted" else self.rejected).append(e)

    @rule(step=st.integers(0, 80))
    def expire(self, step: int) -> None:
        self.now += step
        self.t.expire(self.now)
        for rid, r in sorted(self.pending.items(), key=lambda kv: (kv[1].deadline, kv[0])):
            if r.deadline <= self.now:
                self._close(rid, self.now, expired=True)

    @precondition(lambda self: bool(self.pending))
    @rule()
    def expire_at_the_next_deadline(self) -> None:
        self.expire(max(0, min(r.deadline for r in self.pending.values()) - self.now))

    @rule(back=st.integers(1, 10))
    def seek_back(self, back: int) -> None:
        self.offset = max(0, self.offset - back)

    @rule()
    def drain(self) -> None:
        got = self.t.drain()
        assert got == self.expected
        assert [list(f.members) for f in got] == [list(f.members) for f in self.expected]
        self.results += got
        self.expected = []

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def export_and_restore(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.pending)))
        state = self.t.pending_state(rid)
        assert state is not None
        self.t.restore(orjson.loads(orjson.dumps(state)))
        self.pending[rid].offsets = []  # restored requests carry no offsets

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "t"):
            return
        assert len(self.t) == len(self.pending)
        deadlines = [r.deadline for r in self.pending.values()]
        assert self.t.next_deadline_ms() == (min(deadlines) if deadlines else None)
        want: dict[str, int] = {}
        for r in self.pending.values():
            for source, offset in r.offsets:
                want[source] = min(offset, want.get(source, offset))
        assert self.t.oldest_offsets() == want

    def teardown(self) -> None:
        if not hasattr(self, "t"):
            return
        self.t.close_all(self.now)
        self.results += self.t.drain()
        seen = [e.model_version for f in self.results for e in f.members.values()]
        assert len(seen) == len(set(seen)), "an event in two results"
        assert sorted(seen) == sorted(e.model_version for e in self.accepted), "an event lost"
        assert not {e.model_version for e in self.rejected} & set(seen)
        for f in self.results:
            assert f.expired == (len(f.members) < len(MODELS))


TestJoinMachine = JoinMachine.TestCase
TestJoinMachine.settings = settings(max_examples=300, stateful_step_count=40)
