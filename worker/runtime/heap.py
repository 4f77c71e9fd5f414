"""Give the C heap's free pages back to the system now and then (glibc only).

The join's large blocks (the pending dicts' tables, the offset marks' arrays, lists as
they grow) are freed whenever they are resized, and the fetch responses and produce
batches after every batch. glibc keeps such freed blocks in its heap: above its mmap
threshold, which it raises to the size of the largest block freed, a block comes from
the heap, and a free page inside the heap goes back to the system only with
``malloc_trim``. With a million pending requests that is 10-30 bytes per request of
resident memory holding nothing (docs/design-notes.md, "Memory per pending request").

Fixing the threshold instead (``M_MMAP_THRESHOLD``) maps and unmaps every large block
each time it is used: 10-20 % more CPU per event. So the loop calls ``maybe_trim``
when a fetch finds no records (a busy loop would re-fault at once the pages a trim gives
back: at full load, trimming every second doubled the worker's minor page faults), and
``malloc_trim(0)`` runs at most once a second and at most
``share`` of the CPU time (a trim walks the heap's free blocks: about a millisecond
with a million pending requests). Elsewhere (musl, macOS) there is nothing to call and
``maybe_trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# The largest share of the loop's CPU time spent trimming.
TRIM_SHARE = 0.005
# The shortest time between two trims, however cheap.
MIN_INTERVAL_S = 1.0


def glibc_trim() -> Callable[[], object] | None:
    """The C library's ``malloc_trim(0)`` as a function, or None where it is not glibc's."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """``malloc_trim(0)`` at most every ``interval_s`` and ``share`` of the CPU time.

    ``trim`` (None: nothing to call), ``clock_s`` (monotonic seconds) and ``cpu_s`` (the
    process's CPU seconds: what a trim cost) are parameters so that tests can drive it
    without the C library.
    """

    def __init__(
        self,
        trim: Callable[[], object] | None = None,
        share: float = TRIM_SHARE,
        interval_s: float = MIN_INTERVAL_S,
        clock_s: Callable[[], float] = time.monotonic,
        cpu_s: Callable[[], float] = time.process_time,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self._trim = trim
        self.share = share
        self.interval_s = interval_s
        self._clock_s = clock_s
        self._cpu_s = cpu_s
        self._next_s = float("-inf")
        self.trims = 0

    @classmethod
    def for_this_process(cls) -> HeapTrimmer:
        """A trimmer of this process's C heap (one that does nothing where not glibc)."""
        return cls(glibc_trim())

    def maybe_trim(self) -> bool:
        """Trim if there is a trim to call and the last one's time and cost allow; say
        whether it ran."""
        if self._trim is None:
            return False
        now = self._clock_s()
        if now < self._next_s:
            return False
        started = self._cpu_s()
        self._trim()
        took = self._cpu_s() - started
        self._next_s = now + max(self.interval_s, took / self.share)
        self.trims += 1
        log.debug("trimmed the C heap in %.2f ms", took * 1000)
        return True
