"""The request ids a ``JoinTable`` closed (or was told were fused), remembered for a
while so that a straggler is reported ``late`` instead of opening its request again.
Pure code.

Two implementations with one interface (``add``, ``add_all``, ``forget``, ``late``,
``len``): this module's, and the compiled extension's (``native/src/fused.rs``, which
keeps the ids in Rust: no tuple per id, and no Python call to find that a new request
is not remembered). ``fused_ids`` gives the compiled one where it is installed;
tests/test_join_fused.py compares the two.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable
from typing import Protocol, cast

from worker import native


class Memory(Protocol):
    """What a join table asks of its memory of fused ids (see FusedIds)."""

    def __len__(self) -> int: ...
    def add(self, rid: str, expiry_ms: int) -> None: ...
    def add_all(self, request_ids: Iterable[str], expiry_ms: int, skip: Container[str]) -> int: ...
    def forget(self, now_ms: int | None) -> None: ...
    def late(self, rid: str, now_ms: int) -> bool: ...


def fused_ids(limit: int) -> Memory:
    """An empty memory of at most ``limit`` ids: the compiled one where it is there."""
    if native.FusedIds is None:
        return FusedIds(limit)
    return cast("Memory", native.FusedIds(limit))


class FusedIds:
    """Ids, each until its expiry time and at most ``limit`` of them (the oldest go
    first). ``ids`` maps an id to its entry ``(expiry_ms, id)`` in ``order``, oldest
    first."""

    __slots__ = ("ids", "limit", "order")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ids: dict[str, tuple[int, str]] = {}
        self.order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self.ids)

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

    def late(self, rid: str, now_ms: int) -> bool:
        """Whether ``rid`` is remembered past ``now_ms`` (its events are then late),
        after forgetting what is due at ``now_ms``."""
        ids = self.ids
        if not ids:
            return False
        if self.order[0][0] <= now_ms:
            self.forget(now_ms)
        remembered = ids.get(rid)
        # Event-time close times are not monotone (expired requests close at their
        # deadline), so an entry behind the front may be past its time.
        return remembered is not None and remembered[0] > now_ms
