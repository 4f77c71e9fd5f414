"""The request ids a ``JoinTable`` closed (or was told were fused), remembered for a
while so that a straggler is reported ``late`` instead of opening its request again.
Pure code."""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable


class FusedIds:
    """Ids, each until its expiry time and at most ``limit`` of them (the oldest go
    first). ``ids`` maps an id to its entry ``(expiry_ms, id)`` in ``order``, oldest
    first; the table reads both on its hot path."""

    __slots__ = ("ids", "limit", "order")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids: dict[str, tuple[int, str]] = {}
        self.order: deque[tuple[int, str]] = deque()

    def add(self, rid: str, expiry_ms: int) -> None:
        entry = (expiry_ms, rid)
        self.ids[rid] = entry
        self.order.append(entry)
        if len(self.ids) > self.limit:
            self.forget(None)

    def add_all(self, request_ids: Iterable[str], expiry_ms: int, skip: Container[str]) -> int:
        """Remember every id not in ``skip``; returns how many."""
        ids, order = self.ids, self.order
        n = 0
        for rid in request_ids:
            if rid in skip:
                continue
            entry = (expiry_ms, rid)
            ids[rid] = entry
            order.append(entry)
            n += 1
        if len(ids) > self.limit:
            self.forget(None)
        return n

    def forget(self, now_ms: int | None) -> None:
        """Drop the ids past their time (``now_ms``; None: none) or beyond the limit."""
        ids, order, limit = self.ids, self.order, self.limit
        while order and (len(ids) > limit or (now_ms is not None and order[0][0] <= now_ms)):
            entry = order.popleft()
            # The id may have been closed again since (after an earlier forget): keep that.
            if ids.get(entry[1]) is entry:
                del ids[entry[1]]
