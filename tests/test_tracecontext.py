"""W3C trace context in the pure core (worker/tracecontext.py): parsing a member's
``traceparent`` header and the fused record's header that continues its trace."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.events import PredictionEvent
from worker.tracecontext import (
    fused_traceparent,
    parse_traceparent,
    read_traceparent,
    span_id_for,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"
VALID = f"00-{TRACE}-00f067aa0ba902b7-01"


def event(model: str, traceparent: str | None) -> PredictionEvent:
    return PredictionEvent("r-1", model, 0, label=0, traceparent=traceparent)


def test_a_valid_header_parses_to_itself() -> None:
    """A version-00 header is kept as its text."""
    assert parse_traceparent(VALID.encode()) == VALID


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        VALID.upper().encode(),  # upper-case hex is invalid
        f"ff-{TRACE}-00f067aa0ba902b7-01".encode(),  # version ff is forbidden
        f"00-{'0' * 32}-00f067aa0ba902b7-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"00-{TRACE}-00f067aa0ba902b7-01-extra".encode(),  # version 00 is 55 chars
        f"00-{TRACE}-00f067aa0ba902b-01".encode(),  # short parent id
        f"01-{TRACE}-00f067aa0ba902b7-01x".encode(),  # later version: '-' after 55
        f" {VALID}".encode(),
    ],
)
def test_a_malformed_header_is_none(value: bytes) -> None:
    """Every rule of the specification's version 00 rejects the header."""
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_fields() -> None:
    """A version above 00 with more fields is read by its first four, in the 00 form."""
    value = f"cc-{TRACE}-00f067aa0ba902b7-01-what-the-future-holds".encode()
    assert parse_traceparent(value) == VALID


def test_read_finds_the_header_among_others() -> None:
    """The traceparent header is found among a record's other headers; not bad."""
    headers = [("x-tenant", b"acme"), ("traceparent", VALID.encode())]
    assert read_traceparent(headers) == (VALID, False)


def test_no_header_is_not_bad() -> None:
    """A record without a traceparent header has none, and that is not counted."""
    assert read_traceparent([("x-tenant", b"acme")]) == (None, False)


def test_a_repeated_header_is_bad() -> None:
    """Two traceparent headers are ambiguous: none is used, and it is counted."""
    headers = [("traceparent", VALID.encode()), ("traceparent", VALID.encode())]
    assert read_traceparent(headers) == (None, True)


def test_a_malformed_or_null_header_is_bad() -> None:
    """A malformed value, or a header without a value, is unusable and counted."""
    assert read_traceparent([("traceparent", b"nope")]) == (None, True)
    assert read_traceparent([("traceparent", None)]) == (None, True)  # type: ignore[list-item]


def test_the_fused_header_continues_the_first_traced_member() -> None:
    """Trace id and flags of the first member (by arrival) that has a header; the span id
    is span_id_for(request_id, trace id)."""
    members = [
        event("a", None),
        event("b", f"00-{OTHER}-1111111111111111-00"),
        event("c", VALID),
    ]
    header = fused_traceparent("r-1", members)
    assert header == f"00-{OTHER}-{span_id_for('r-1', OTHER)}-00".encode()


def test_no_traced_member_gives_no_header() -> None:
    """Without any member's header the fused record gets none."""
    assert fused_traceparent("r-1", [event("a", None), event("b", None)]) is None


@settings(max_examples=200, derandomize=True)
@given(st.text(min_size=1, max_size=256), st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
def test_the_span_id_is_deterministic_and_valid(request_id: str, trace_id: str) -> None:
    """The same request and trace give the same 16-hex, non-zero span id; the fused
    header it makes parses as a valid traceparent."""
    span = span_id_for(request_id, trace_id)
    assert span == span_id_for(request_id, trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", span)
    assert span != "0" * 16
    header = f"00-{trace_id}-{span}-01".encode()
    if trace_id != "0" * 32:
        assert parse_traceparent(header) == header.decode()


def test_the_span_id_differs_per_request_and_trace() -> None:
    """Another request or another trace gives another span id."""
    ids = {span_id_for(rid, t) for rid in ("r-1", "r-2") for t in (TRACE, OTHER)}
    assert len(ids) == 4
