"""The collection of the consumer's cyclic garbage (worker/runtime/cycles.py): only when
marked, at most a share of the CPU time, and it frees what the tuned collector leaves."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from worker.runtime.cycles import CycleCollector


class Clocks:
    """A wall clock and a CPU clock the test moves by hand; ``collect`` costs ``cost_s``."""

    def __init__(self, cost_s: float = 0.0) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.cost_s = cost_s
        self.collections = 0

    def collect(self) -> int:
        self.collections += 1
        self.cpu_s += self.cost_s
        return 0

    def collector(self, share: float = 0.02) -> CycleCollector:
        return CycleCollector(
            share, clock_s=lambda: self.wall_s, cpu_s=lambda: self.cpu_s, collect=self.collect
        )


def test_nothing_is_collected_until_marked() -> None:
    """Without a mark, maybe_collect never runs the collector."""
    clocks = Clocks()
    cycles = clocks.collector()
    assert not cycles.maybe_collect()
    assert clocks.collections == 0


def test_a_mark_is_collected_once() -> None:
    """A mark gives one collection; the next call, unmarked, gives none."""
    clocks = Clocks()
    cycles = clocks.collector()
    cycles.mark()
    assert cycles.maybe_collect()
    assert not cycles.maybe_collect()
    assert clocks.collections == 1


def test_collections_take_at_most_their_share_of_the_cpu_time() -> None:
    """A collection costing 10 ms of CPU at a 2 % share puts the next off by 0.5 s of
    wall time; a mark made meanwhile waits for it instead of being lost."""
    clocks = Clocks(cost_s=0.010)
    cycles = clocks.collector(share=0.02)
    cycles.mark()
    assert cycles.maybe_collect()
    cycles.mark()
    clocks.wall_s = 0.49
    assert not cycles.maybe_collect()
    clocks.wall_s = 0.50
    assert cycles.maybe_collect()
    assert clocks.collections == 2


class _Records:
    """Like aiokafka's PartitionRecords: a record generator whose frame refers back to
    its owner, over a fetch response's buffer."""

    def __init__(self, buffer: bytes) -> None:
        self.buffer = buffer
        self.iterator = self._records()

    def _records(self) -> Iterator[bytes]:
        for i in range(0, len(self.buffer), 100):
            yield self.buffer[i : i + 100]


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    """The collector as tune_gc leaves it during a flood: it never runs by itself."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@pytest.mark.usefixtures("no_automatic_collection")
def test_frees_records_dropped_half_read() -> None:
    """Records dropped half-read stay alive in their cycle until a marked collection."""
    records = _Records(bytes(1 << 20))
    next(records.iterator)
    dropped = weakref.ref(records)
    del records
    assert dropped() is not None, "the cycle is gone without a collection: the test proves nothing"
    cycles = CycleCollector()
    cycles.mark()
    assert cycles.maybe_collect()
    assert dropped() is None


def test_a_share_outside_zero_to_one_is_refused() -> None:
    """The constructor names the bad value."""
    with pytest.raises(ValueError, match="got 0"):
        CycleCollector(share=0)
