"""Trimming the C heap (worker/runtime/heap.py): at most once an interval and a share of
the CPU time, nothing where there is no glibc, and a real trim gives pages back."""

from __future__ import annotations

import platform
import sys

import pytest

from worker.runtime.heap import HeapTrimmer, glibc_trim


class Clocks:
    """A wall clock and a CPU clock the test moves by hand; a trim costs ``cost_s``."""

    def __init__(self, cost_s: float = 0.0) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.cost_s = cost_s
        self.trims = 0

    def trim(self) -> int:
        self.trims += 1
        self.cpu_s += self.cost_s
        return 1

    def trimmer(self, share: float = 0.01, interval_s: float = 1.0) -> HeapTrimmer:
        return HeapTrimmer(
            self.trim, share, interval_s, clock_s=lambda: self.wall_s, cpu_s=lambda: self.cpu_s
        )


def test_the_first_call_trims() -> None:
    """A fresh trimmer trims at its first call."""
    clocks = Clocks()
    assert clocks.trimmer().maybe_trim()
    assert clocks.trims == 1


def test_no_second_trim_within_the_interval() -> None:
    """A cheap trim is not repeated before ``interval_s`` has passed."""
    clocks = Clocks(cost_s=0.0001)
    heap = clocks.trimmer(interval_s=1.0)
    heap.maybe_trim()
    clocks.wall_s = 0.99
    assert not heap.maybe_trim()
    clocks.wall_s = 1.0
    assert heap.maybe_trim()
    assert clocks.trims == heap.trims == 2


def test_a_costly_trim_waits_its_cost_over_the_share() -> None:
    """A trim of 20 ms at a 1 % share is followed by the next one 2 s later, not 1 s."""
    clocks = Clocks(cost_s=0.02)
    heap = clocks.trimmer(share=0.01, interval_s=1.0)
    heap.maybe_trim()
    clocks.wall_s = 1.5
    assert not heap.maybe_trim()
    clocks.wall_s = 2.0
    assert heap.maybe_trim()


def test_without_a_trim_to_call_nothing_runs() -> None:
    """Where the C library is not glibc (trim None), maybe_trim never runs."""
    heap = HeapTrimmer(None)
    assert not heap.maybe_trim()
    assert heap.trims == 0


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_0_1_is_refused(share: float) -> None:
    """The share must be in (0, 1]; the error names it."""
    with pytest.raises(ValueError, match="share"):
        HeapTrimmer(None, share)


def test_glibc_trim_exists_exactly_under_glibc() -> None:
    """glibc_trim finds malloc_trim on Linux with glibc, and nothing elsewhere."""
    is_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert (glibc_trim() is not None) == is_glibc


@pytest.mark.skipif(glibc_trim() is None, reason="needs glibc")
def test_a_real_trim_gives_freed_heap_pages_back() -> None:
    """Blocks freed in the middle of the heap stay resident until malloc_trim: after it
    the process's resident size is smaller by most of them."""
    resident = _resident_bytes()
    # 64 KiB blocks: below glibc's default mmap threshold, so from the heap; every
    # other one is kept, so that the freed ones cannot go back by shrinking its top.
    blocks = [bytearray(b"x" * 65_536) for _ in range(2_000)]
    kept = blocks[1::2]
    del blocks
    before = _resident_bytes()
    trim = glibc_trim()
    assert trim is not None
    trim()
    after = _resident_bytes()
    assert before - after > 30 * 2**20, (resident, before, after)
    assert len(kept) == 1_000


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096
