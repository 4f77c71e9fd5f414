"""Collect the cyclic garbage the consumer leaves behind, which the tuned collector
would never reach.

``tune_gc`` freezes start-up objects and raises the young generation's threshold to
50,000 net allocations: the hot path's objects are freed by reference counting, so that
count is hardly ever reached and no collection runs for hours. That is fine while
nothing makes reference cycles. But aiokafka does, whenever it drops fetched records it
has not returned: on ``pause`` (and on ``seek``) each buffered partition's
``PartitionRecords`` is discarded half-read, and its record generator's frame refers
back to it. The cycle holds that partition's whole fetch response (up to
``max_partition_fetch_bytes``, 1 MB by default). A flood that keeps fetching paused and
resumed (backpressure at ``max_pending``) thus kept about 2 MB per pause for good:
+190 MB over 100,000 requests with 1,000 pending at most.

So the loop marks when such garbage may have been made (on resume, once the paused
fetches dropped what was buffered; after an assignment) and ``maybe_collect`` then runs
one full collection, at most a ``share`` of the time: a collection walks every object
made since start-up that is still alive (mostly pending requests: about 1 ms for 1,000,
a few hundred ms for 100,000), so the next one waits ``took / share`` seconds. ``took``
is the process's CPU time, not the wall clock: on a busy machine a collection that is
descheduled halfway would otherwise look long and put off the next one for seconds.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# The largest share of the loop's time spent in these collections.
COLLECT_SHARE = 0.02


class CycleCollector:
    """Full collections when marked, rate-limited to ``share`` of the CPU time.

    ``clock_s`` (monotonic seconds: when), ``cpu_s`` (the process's CPU seconds: what a
    collection cost) and ``collect`` (returns the objects freed) are parameters so that
    tests can drive it without the real collector.
    """

    def __init__(
        self,
        share: float = COLLECT_SHARE,
        clock_s: Callable[[], float] = time.monotonic,
        cpu_s: Callable[[], float] = time.process_time,
        collect: Callable[[], int] = gc.collect,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self._clock_s = clock_s
        self._cpu_s = cpu_s
        self._collect = collect
        self._marked = False
        self._next_s = float("-inf")
        self.collections = 0

    def mark(self) -> None:
        """Cyclic garbage may have been made: collect at the next chance."""
        self._marked = True

    def maybe_collect(self) -> bool:
        """Collect if marked and the last collection's cost allows; say whether it ran."""
        if not self._marked:
            return False
        now = self._clock_s()
        if now < self._next_s:
            return False
        started = self._cpu_s()
        freed = self._collect()
        took = self._cpu_s() - started
        self._marked = False
        self._next_s = now + took / self.share
        self.collections += 1
        log.debug("collected %d cyclic objects in %.1f ms", freed, took * 1000)
        return True
