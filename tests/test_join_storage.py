"""How the join table stores pending requests: shared strings and ints, the deadline
buckets and the per-source offset marks, each against what a plain computation says."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from worker.events import PredictionEvent
from worker.join import JoinTable

MODELS = ("a", "b", "c")


def ev(rid: str, model: str, ts: int = 0, **kw: Any) -> PredictionEvent:
    if not {"probs", "label", "score"} & kw.keys():
        kw["probs"] = (0.25, 0.75)
    return PredictionEvent(request_id=rid, model=model, ts=ts, **kw)


def table(timeout_ms: int = 100, **kw: Any) -> JoinTable:
    return JoinTable(MODELS, timeout_ms, 500, 1000, **kw)


def test_a_model_version_equal_to_its_models_last_is_shared() -> None:
    """A model's repeated model_version is held once, not once per pending event."""
    t = table()
    first = ev("r1", "a", model_version="".join(["v", "1"]))
    later = ev("r2", "a", model_version="".join(["v", "1"]))
    assert later.model_version is not first.model_version
    t.add(first, 0)
    t.add(later, 0)
    assert later.model_version is first.model_version


def test_a_changed_model_version_is_kept_as_sent() -> None:
    """A new model_version is the event's own and becomes the one later events share."""
    t = table()
    t.add(ev("r1", "a", model_version="v1"), 0)
    new = ev("r2", "a", model_version="v2")
    t.add(new, 0)
    again = ev("r3", "a", model_version="".join(["v", "2"]))
    t.add(again, 0)
    assert (new.model_version, again.model_version) == ("v2", "v2")
    assert again.model_version is new.model_version


def test_a_later_members_equal_ts_is_shared() -> None:
    """A later member with the first member's ts holds the first's int object."""
    t = table()
    base = 1_764_000_000_000
    first, later = ev("r", "a", ts=base + 1), ev("r", "b", ts=base + 1)
    assert later.ts is not first.ts
    t.add(first, 0)
    t.add(later, 0)
    assert later.ts is first.ts


def test_a_decided_requests_span_includes_the_deciding_event() -> None:
    """The event that lets a request close early is part of the span it was fused from."""

    def decide_on_two(members: Sequence[PredictionEvent | None]) -> int | None:
        return 0 if sum(m is not None for m in members) >= 2 else None

    t = table(decider=decide_on_two)
    t.add(ev("r", "a"), 0, "in:0", 5)
    t.add(ev("r", "b"), 0, "in:0", 9)
    [done] = t.drain()
    assert done.decided
    assert t.take_spans() == {"in:0": [(5, 9)]}


def test_requests_of_one_step_share_a_deadline_bucket_and_close_by_request_id() -> None:
    """Many requests opened at one clock time close together, in request_id order."""
    t = table(timeout_ms=10)
    ids = [f"r{i:04d}" for i in range(500)]
    shuffled = random.Random(3).sample(ids, len(ids))
    for rid in shuffled:
        t.add(ev(rid, "a"), 0)
    assert len(t._deadlines) == len(ids)
    assert t.next_deadline_ms() == 10
    t.expire(10)
    assert [d.request_id for d in t.drain()] == ids
    assert len(t._deadlines) == 0


def test_next_deadline_skips_requests_closed_by_completion() -> None:
    """A deadline whose requests all completed is not reported as the next one."""
    t = table(timeout_ms=10)
    t.add(ev("early", "a"), 0)
    t.add(ev("later", "a"), 5)
    for m in ("b", "c"):
        t.add(ev("early", m), 6)
    assert t.next_deadline_ms() == 15


def test_oldest_offsets_after_a_re_read_below_other_requests() -> None:
    """A request re-read below the marks of others is the minimum until it closes."""
    t = table()
    t.add(ev("r1", "a"), 0, "in:0", 10)
    t.add(ev("r2", "a"), 0, "in:0", 20)
    t.add(ev("r3", "a"), 0, "in:0", 4)  # after a seek back
    assert t.oldest_offsets() == {"in:0": 4}
    t.add(ev("r4", "a"), 0, "in:0", 30)
    for m in ("b", "c"):
        t.add(ev("r3", m), 0, "in:0", 31)
    assert t.oldest_offsets() == {"in:0": 10}


def test_oldest_offsets_match_a_brute_force_minimum_over_a_random_stream() -> None:
    """Against the minimum over pending requests' events, after seeks back and closes."""
    rng = random.Random(11)
    t = table(timeout_ms=50)
    offset = {"in:0": 0, "in2:0": 0}
    held: dict[str, list[tuple[str, int]]] = {}
    for now in range(3000):
        source = rng.choice(list(offset))
        offset[source] = max(0, offset[source] + (rng.randint(-40, 0) if now % 97 == 0 else 1))
        rid = f"r{rng.randint(0, 300)}"
        if t.add(ev(rid, rng.choice(MODELS)), now, source, offset[source]) == "accepted":
            held.setdefault(rid, []).append((source, offset[source]))
        t.expire(now)
        held = {r: marks for r, marks in held.items() if r in t}
        t.drain()
        if now % 50 == 0:
            want: dict[str, int] = {}
            for marks in held.values():
                for s, o in marks:
                    want[s] = min(o, want.get(s, o))
            assert t.oldest_offsets() == want


@pytest.mark.parametrize(
    "offsets",
    [
        (5, 9, 7),
        (2**28, 2**28 + 3),
        (2**40, 2**40 + 2**33, 2**40 + 1),  # further apart than the packed form holds
        (2**62, 3, 2**62 + 1),  # a re-read far below
        (9, 7, 5),  # the completing event below the others (a re-read after a seek back)
    ],
)
def test_spans_are_exact_at_any_offsets(offsets: tuple[int, ...]) -> None:
    """The (first, last) offsets of a request's events, however large or far apart."""
    t = table()
    models = list(MODELS)
    for model, offset in zip(models, offsets, strict=False):
        t.add(ev("r", model), 0, "in:0", offset)
    if len(offsets) < len(models):
        assert t.oldest_offsets() == {"in:0": min(offsets)}
        t.close_all(1)
    assert len(t.drain()) == 1
    assert t.take_spans() == {"in:0": [(min(offsets), max(offsets))]}


def test_a_requests_largest_offset_is_held_as_its_gap_above_the_smallest() -> None:
    """Two events 5 offsets apart: the request holds the smallest offset and the gap, a
    small int CPython shares (no int object of its own), and its span is exact."""
    t = table()
    t.add(ev("r", "a"), 0, "in:0", 10**9)
    t.add(ev("r", "b"), 0, "in:0", 10**9 + 5)
    p = t._pending["r"]
    assert (p.low, p.gap) == (10**9, 5)
    assert p.gap is int("5")
    t.close_all(1)
    assert len(t.drain()) == 1
    assert t.take_spans() == {"in:0": [(10**9, 10**9 + 5)]}


def test_an_unmarked_request_is_not_held_by_an_old_mark_of_its_id() -> None:
    """A request id closed with a mark at offset 0 and opened again without an offset
    leaves oldest_offsets empty: the old entry is stale, whatever the new one holds."""
    t = JoinTable(MODELS, 100, 0, 0)  # no memory of fused ids: "r" may open again
    for offset, model in enumerate(MODELS):
        t.add(ev("r", model), 0, "in:0", offset)
    t.add(ev("r", "a"), 0)
    assert "r" in t
    assert t.oldest_offsets() == {}


def test_a_request_marked_only_by_another_source_than_the_tables_first() -> None:
    """The marks of a source other than the table's first are kept by the table, not by
    the request: they count in oldest_offsets and in the request's spans, and are gone
    once it closes."""
    t = table()
    t.add(ev("r1", "a"), 0, "in:0", 5)  # in:0: the table's first source
    t.add(ev("r2", "a"), 0, "other:0", 3)
    t.add(ev("r2", "b"), 0, "other:0", 8)
    assert t.oldest_offsets() == {"in:0": 5, "other:0": 3}
    t.close_all(1)
    assert [d.request_id for d in t.drain()] == ["r1", "r2"]
    assert t.take_spans() == {"in:0": [(5, 5)], "other:0": [(3, 8)]}
    assert t.oldest_offsets() == {}
    assert t._offsets.more == {}
    assert t._offsets.tracked == 0


def test_a_replaced_request_drops_its_marks_of_another_source() -> None:
    """A pending request replaced by a restored state leaves no mark behind, of the
    table's first source or of another: the restored one has no offsets."""
    t = table()
    t.add(ev("r", "a"), 0, "in:0", 5)
    t.add(ev("r", "b"), 0, "other:0", 3)
    state = t.pending_state("r")
    assert state is not None
    t.restore(state)
    assert t.oldest_offsets() == {}
    assert t._offsets.more == {}
    assert t._offsets.tracked == 0


def test_a_restored_request_keeps_its_first_ts_when_its_first_member_is_gone() -> None:
    """Realigned to a config without the first member's model, the request still has
    the first_ts it was saved with, and exports it again."""
    old = table()
    old.add(ev("r", "a", ts=3), 10)
    old.add(ev("r", "b", ts=8), 11)
    state = old.pending_state("r")
    assert state is not None
    del state["members"]["a"]  # what worker.state_deps.realign does when "a" goes
    t = table()
    t.restore(state)
    assert t.pending_state("r") == state
    t.close_all(200)
    [done] = t.drain()
    assert (done.first_ts, list(done.members)) == (3, ["b"])


def test_a_pending_request_of_three_models_takes_112_bytes() -> None:
    """Three slots and an item array of the three events and the opening time: 80 bytes
    and 32 (five slots took 96 and 32), the opening time exact."""
    t = table()
    t.add(ev("r", "a"), 10**12)
    p = t._pending["r"]
    assert sys.getsizeof(p) <= 112
    assert p.opened_ms == 10**12
    assert list(p[:3]) == [p[0], None, None]


def test_a_restored_request_keeps_a_deadline_set_by_another_timeout() -> None:
    """Saved by a table with a 100 ms timeout, restored by one with 1,000: it still
    closes at its saved deadline, exports it again, and its id's next request gets the
    new table's timeout."""
    old = table(timeout_ms=100)
    old.add(ev("r", "a", ts=3), 10)
    state = old.pending_state("r")
    assert state is not None
    assert state["deadline_ms"] == 110
    t = table(timeout_ms=1000)
    t.restore(state)
    assert t.pending_state("r") == state
    assert t.next_deadline_ms() == 110
    t.expire(109)
    assert "r" in t
    t.expire(110)
    [done] = t.drain()
    assert (done.opened_ms, done.fused_ts, done.expired) == (10, 110, True)
    t.add(ev("r2", "a"), 200)
    assert t.next_deadline_ms() == 1200
    assert t._odd_deadlines == {}


def test_an_event_time_deadline_follows_the_first_members_ts() -> None:
    """Under event time a request's deadline is its first member's ts + timeout_ms,
    whatever later members' ts are and whenever it opened on the stream clock."""
    t = table(timeout_ms=100, event_time=True)
    t.add(ev("r", "b", ts=40), 90)
    t.add(ev("r", "a", ts=5), 95)
    assert t.next_deadline_ms() == 140
    state = t.pending_state("r")
    assert state is not None
    assert (state["opened_ms"], state["deadline_ms"]) == (90, 140)
    t.expire(139)
    assert "r" in t
    t.expire(140)
    [done] = t.drain()
    assert (done.first_ts, done.opened_ms, done.fused_ts) == (40, 90, 140)
