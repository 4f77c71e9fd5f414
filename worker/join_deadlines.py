"""The deadlines of a ``JoinTable``'s pending requests: which request is due next. Pure code.

Requests are kept in buckets by deadline (``{deadline_ms: request ids}``) with a heap of
the distinct deadlines, not a heap entry per request: live, every request a step opens
shares the step's ``now_ms`` and so one deadline, and an append to the current bucket
costs no tuple, no heap sift and no string comparisons. A bucket holds a lone id as the
string itself (event time gives most requests a deadline of their own) and a list from
its second id on.

Deletion is lazy: the table closes a request without touching its bucket, and a bucket
entry is live while its request is pending with that deadline (``is_live``). Buckets are
rebuilt from the pending requests once stale entries outnumber the live ones, so memory
follows the pending requests. Equal deadlines close in request_id order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping

from worker.join_pending import _Pending

# Buckets are rebuilt once they hold this many entries more than twice the live ones.
COMPACT_SLACK = 1024


class Deadlines:
    """Request ids by deadline; ``len`` is the number of entries, stale ones included."""

    __slots__ = ("_buckets", "_entries", "_heap", "_last", "_last_bucket")

    def __init__(self) -> None:
        self._buckets: dict[int, str | list[str]] = {}
        self._heap: list[int] = []  # the distinct deadlines of _buckets
        self._entries = 0
        # The bucket of the latest push while it is a list: the next push of the same
        # deadline (the rest of a live step) appends without a dict look-up.
        self._last = -1
        self._last_bucket: list[str] | None = None

    def __len__(self) -> int:
        return self._entries

    def push(self, deadline_ms: int, rid: str) -> None:
        self._entries += 1
        if deadline_ms == self._last and self._last_bucket is not None:
            self._last_bucket.append(rid)
            return
        buckets = self._buckets
        bucket = buckets.get(deadline_ms)
        self._last = deadline_ms
        if bucket is None:
            buckets[deadline_ms] = rid
            heapq.heappush(self._heap, deadline_ms)
            self._last_bucket = None
        elif type(bucket) is str:
            self._last_bucket = buckets[deadline_ms] = [bucket, rid]
        else:
            assert isinstance(bucket, list)
            bucket.append(rid)
            self._last_bucket = bucket

    def pop_due(self, now_ms: int | None) -> Iterator[tuple[int, list[str]]]:
        """Remove and yield the buckets due at ``now_ms`` (all when None), earliest first,
        each as (deadline, its ids sorted), stale ones included."""
        heap, buckets = self._heap, self._buckets
        while heap and (now_ms is None or heap[0] <= now_ms):
            deadline = heapq.heappop(heap)
            bucket = buckets.pop(deadline)
            if deadline == self._last:
                self._last_bucket = None
                self._last = -1
            if type(bucket) is str:
                self._entries -= 1
                yield deadline, [bucket]
            else:
                assert isinstance(bucket, list)
                self._entries -= len(bucket)
                bucket.sort()
                yield deadline, bucket

    def next_ms(self, is_live: Callable[[int, str], bool]) -> int | None:
        """The earliest deadline with a live entry; buckets with none are dropped."""
        heap, buckets = self._heap, self._buckets
        while heap:
            deadline = heap[0]
            bucket = buckets[deadline]
            if type(bucket) is str:
                if is_live(deadline, bucket):
                    return deadline
            else:
                assert isinstance(bucket, list)
                # Drop the stale head of the bucket, so the next call starts at a live id.
                for k, rid in enumerate(bucket):
                    if is_live(deadline, rid):
                        if k:
                            del bucket[:k]
                            self._entries -= k
                        return deadline
            for _ in self.pop_due(deadline):
                pass
        return None

    def compact(
        self, pending: Mapping[str, _Pending], deadline_of: Callable[[str, _Pending], int]
    ) -> None:
        """Rebuild from the pending requests (``deadline_of``: a request's deadline) when
        stale entries outnumber live ones."""
        if self._entries <= 2 * len(pending) + COMPACT_SLACK:
            return
        self.__init__()  # type: ignore[misc]
        for rid, p in pending.items():
            self.push(deadline_of(rid, p), rid)
