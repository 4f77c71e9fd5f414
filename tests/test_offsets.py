"""The at-least-once commit rule (worker/offsets.py): never commit inside the offset
span of a request fused since the last commit, so a repeat is never worse."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from worker.events import PredictionEvent
from worker.join import JoinTable
from worker.offsets import keep_span, merge_spans, safe_commit_offset

SPANS = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=12,
)


def inside(offset: int, spans: list[tuple[int, int]]) -> bool:
    return any(first < offset <= last for first, last in spans)


@given(st.integers(0, 100), SPANS)
def test_the_commit_is_inside_no_span(base: int, spans: list[tuple[int, int]]) -> None:
    """The offset is <= base and a restart from it reads every event of each fused
    request or none of them."""
    offset = safe_commit_offset(base, spans)
    assert offset <= base
    assert not inside(offset, spans)


@given(st.integers(0, 100), SPANS)
def test_the_commit_is_the_highest_such_offset(base: int, spans: list[tuple[int, int]]) -> None:
    """Nothing is re-read needlessly: every offset above the result, up to base, lies
    inside some span."""
    offset = safe_commit_offset(base, spans)
    assert all(inside(c, spans) for c in range(offset + 1, base + 1))


@given(st.integers(0, 100), SPANS)
def test_merged_spans_give_the_same_commit(base: int, spans: list[tuple[int, int]]) -> None:
    """Merging the spans changes no commit: the same offsets lie inside them."""
    merged = merge_spans(spans)
    assert safe_commit_offset(base, merged) == safe_commit_offset(base, spans)
    assert all(inside(c, merged) == inside(c, spans) for c in range(102))


@given(SPANS)
def test_merged_spans_are_disjoint_and_ascending(spans: list[tuple[int, int]]) -> None:
    """Merged spans are non-empty, ascending, and leave a free offset between two."""
    merged = merge_spans(spans)
    assert all(first < last for first, last in merged)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(merged))


def test_a_pending_event_inside_a_fused_span_pulls_the_commit_to_its_start() -> None:
    """Request A fused from offsets 3 and 9; request B pending from offset 5: committing
    5 would re-read only A's event 9, so the commit is 3."""
    assert safe_commit_offset(5, [(3, 9)]) == 3
    assert safe_commit_offset(10, [(3, 9)]) == 10


@given(st.integers(0, 100), SPANS)
def test_spans_kept_as_they_close_cover_the_same_offsets(
    base: int, spans: list[tuple[int, int]]
) -> None:
    """Kept one after the other with ``keep_span``, spans leave the same offsets inside
    (so the same commit), and never more of them than were given."""
    kept: list[tuple[int, int]] = []
    for span in spans:
        keep_span(kept, span)
    assert len(kept) <= len(spans)
    assert all(inside(c, kept) == inside(c, spans) for c in range(102))
    assert safe_commit_offset(base, kept) == safe_commit_offset(base, spans)


def test_a_span_starting_inside_the_last_extends_it() -> None:
    """Interleaved requests chain: a span that starts inside the last one kept extends
    it; one that starts past it (or before it) is kept after it."""
    kept: list[tuple[int, int]] = []
    for span in [(3, 9), (5, 12), (6, 8), (20, 21), (1, 2)]:
        keep_span(kept, span)
    assert kept == [(3, 12), (20, 21), (1, 2)]


def test_chained_spans_are_followed() -> None:
    """Lowering into one span's start can land inside another: follow it down."""
    assert safe_commit_offset(8, [(5, 9), (2, 6)]) == 2


def event(rid: str, model: str) -> PredictionEvent:
    return PredictionEvent(rid, model, 1, label=0)


def test_the_join_reports_each_fused_request_s_span_per_source() -> None:
    """The table reports, per source, the first and last offset a closed request was
    fused from, the completing event included."""
    t = JoinTable(["a", "b"], 1000, 0, 0)
    t.add(event("r", "a"), 0, "in", 4)
    t.add(event("x", "a"), 0, "in", 5)
    t.add(event("r", "b"), 0, "in", 9)
    assert len(t.drain()) == 1
    assert t.take_spans() == {"in": [(4, 9)]}
    assert t.take_spans() == {}


def test_spans_of_an_expired_request_and_of_several_sources() -> None:
    """An expired request's span covers the events it had; each source has its own."""
    t = JoinTable(["a", "b", "c"], 1000, 0, 0)
    t.add(event("r", "a"), 0, "t1", 7)
    t.add(event("r", "b"), 0, "t2", 2)
    t.expire(1000)
    assert len(t.drain()) == 1
    assert t.take_spans() == {"t1": [(7, 7)], "t2": [(2, 2)]}
