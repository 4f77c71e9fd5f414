"""W3C Trace Context (``traceparent``) for the engine: read a member event's header, and
write the header of the fused record that continues the first member's trace. Pure: no
Kafka, no clock, no I/O.

Decisions (DESIGN.md, "Client kit and trace context"):

- The header is read from the record header named exactly ``traceparent`` (Kafka header
  keys are case-sensitive; every W3C propagator for Kafka writes this name).
- A malformed header, or more than one ``traceparent`` header on a record (which is
  ambiguous, as it is in HTTP), is ignored and counted (``Step.bad_traceparents``), never
  a dead-letter reason: tracing is advisory and must not cost a prediction.
- Parsing follows the specification's rules for version ``00`` (exactly 55 characters,
  lower-case hex, no all-zero trace or parent id, version ``ff`` invalid); a higher
  version is read by its first four fields, as the specification asks, and kept in the
  version ``00`` form, the only one this worker writes.
- The fused record's header continues the trace of the first member (by arrival) that
  sent a valid header: same trace id, same flags, and a new parent (span) id that is a
  hash of the request_id and the trace id. Deterministic on purpose: ``fuse``, ``replay``
  and a repeat after a crash produce byte-identical records. When an OpenTelemetry SDK is
  configured, the runtime replaces that span id with the id of a span it really exports
  (``worker/tracing.py``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from worker.events import PredictionEvent

HEADER = "traceparent"
_FIELDS = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
# BLAKE2b's personalisation keeps these ids apart from any other hash of the same text.
_PERSON = b"fusion-span-id"


def parse_traceparent(value: bytes) -> str | None:
    """The ``traceparent`` header ``value`` in its version-00 form
    (``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``), or None when it breaks
    the specification."""
    match = _FIELDS.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, _ = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if len(value) != 55:
        # Version 00 is exactly 55 characters; a later version may add fields after a dash.
        if version == b"00" or value[55:56] != b"-":
            return None
        value = b"00" + value[2:55]
    return value.decode("ascii")


def read_traceparent(headers: Iterable[tuple[str, bytes]]) -> tuple[str | None, bool]:
    """``(traceparent, bad)`` of a record's headers: the parsed header (None when there is
    none or it is invalid) and whether a header was there but unusable (malformed, or
    several ``traceparent`` headers)."""
    found: bytes | None = None
    for key, value in headers:
        if key == HEADER:
            if found is not None:
                return None, True
            found = value if value is not None else b""
    if found is None:
        return None, False
    parsed = parse_traceparent(found)
    return parsed, parsed is None


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id of a parsed ``traceparent``."""
    return traceparent[3:35]


def span_id_for(request_id: str, trace_id: str) -> str:
    """The fused record's parent (span) id: 16 hex digits, a function of the request_id
    and the trace id alone, never all zeros (invalid by the specification)."""
    digest = hashlib.blake2b(
        f"{trace_id}:{request_id}".encode(), digest_size=8, person=_PERSON
    ).hexdigest()
    # One chance in 2**64; the specification forbids the all-zero id.
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def first_traceparent(members: Iterable[PredictionEvent]) -> str | None:
    """The ``traceparent`` of the first member (by arrival) that sent a valid one."""
    for ev in members:
        if ev.traceparent is not None:
            return ev.traceparent
    return None


def fused_traceparent(request_id: str, members: Iterable[PredictionEvent]) -> bytes | None:
    """The fused record's ``traceparent`` header value: the first member's (by arrival)
    trace id and flags, and ``span_id_for(request_id, trace_id)``; None when no member
    sent a valid header."""
    first = first_traceparent(members)
    if first is None:
        return None
    trace_id = first[3:35]
    return f"00-{trace_id}-{span_id_for(request_id, trace_id)}-{first[53:55]}".encode()


def replace_header(
    headers: Sequence[tuple[str, bytes]] | None, value: bytes
) -> list[tuple[str, bytes]]:
    """``headers`` with every ``traceparent`` header replaced by one of ``value``."""
    return [*(h for h in headers or () if h[0] != HEADER), (HEADER, value)]
