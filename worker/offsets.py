"""Which input offset at-least-once may commit. Pure: no Kafka, no clock.

A repeat must never be worse than the original (DESIGN.md, "Delivery"): after a crash a
request may be fused again only from all the events it was first fused from. So the
committed offset of an input partition never falls inside the offset span of a request
fused since the last commit: a restart from inside it would re-read only its later
events and fuse a poorer result.
"""

from __future__ import annotations

from collections.abc import Iterable


def safe_commit_offset(base: int, spans: Iterable[tuple[int, int]]) -> int:
    """The largest offset <= ``base`` that lies inside no span.

    ``base`` is the offset the partition could commit otherwise (its consumed position,
    or the first offset of a still-pending request if lower). ``spans`` are the
    ``(first, last)`` offsets of the events of each request fused from this partition;
    an offset ``c`` is inside a span when ``first < c <= last`` (a restart from ``c``
    would miss ``first`` but read ``last``).

    Spans are visited by descending ``first``: lowering to one span's ``first`` can only
    land inside a span with a smaller ``first``, which comes later.
    """
    offset = base
    for first, last in sorted(spans, reverse=True):
        if first < offset <= last:
            offset = first
    return offset


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same set of offsets "inside" as ``spans``, as few disjoint spans, ascending.

    ``(a, b)`` and ``(c, d)`` with ``c <= b`` cover every offset of ``a < o <= max(b, d)``
    between them, so they become one; an empty span (``first == last``) covers nothing.
    Why: the requests of a busy stream interleave, so their spans chain into long runs;
    kept one by one they pile up between commits (thousands per partition per second
    when the committed offset cannot move) and every commit sorts them all.
    """
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if first >= last:
            continue
        if merged and first <= merged[-1][1]:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def keep_span(kept: list[tuple[int, int]], span: tuple[int, int]) -> None:
    """Add ``span`` to ``kept``, the spans of requests as they close: into the last one
    when it starts inside it (``merge_spans``' rule: the same offsets inside), else
    after it. Requests interleave, so most spans extend the last, and a commit has a
    handful to merge where it would have one per request."""
    if kept:
        first, last = kept[-1]
        if first <= span[0] <= last:
            if span[1] > last:
                kept[-1] = (first, span[1])
            return
    kept.append(span)
