"""The results a gateway has received but nobody asked for yet: bounded by count and age.

Pure (the caller passes the time), so the bounds are tested without a broker or a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class ResultMemory:
    """Fused results by request_id, oldest first; at most ``max_results`` of them, none
    older than ``max_age_s`` (seconds on the caller's clock).

    A result stays after it was read, so that a second ``get`` for the same request (a
    retried HTTP call) still finds it; the bounds decide when it goes. The first result of
    a request is kept: the worker may repeat one after a crash, never improve on it.
    """

    __slots__ = ("_items", "max_age_s", "max_results")

    def __init__(self, max_results: int, max_age_s: float) -> None:
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.max_results = max_results
        self.max_age_s = max_age_s
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request_id: str, result: dict[str, Any], now_s: float) -> bool:
        """Remember a result; False when one is already held for that request."""
        self.expire(now_s)
        if request_id in self._items:
            return False
        self._items[request_id] = (now_s, result)
        while len(self._items) > self.max_results:
            self._items.popitem(last=False)
        return True

    def get(self, request_id: str, now_s: float) -> dict[str, Any] | None:
        """The result held for a request, or None (never received, or forgotten)."""
        self.expire(now_s)
        item = self._items.get(request_id)
        return None if item is None else item[1]

    def expire(self, now_s: float) -> None:
        """Forget results older than ``max_age_s``."""
        horizon = now_s - self.max_age_s
        items = self._items
        while items:
            first = next(iter(items.values()))
            if first[0] >= horizon:
                break
            items.popitem(last=False)
