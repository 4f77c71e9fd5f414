"""The no-broker step benchmark's input (bench/bench_step_input.py): the live load's
events cut into steps and record batches as a fetching worker would get them."""

from __future__ import annotations

from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import bench_step_input as steps_bench

Records = steps_bench.Records


def _read(fetched: bytes) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """(offset, timestamp, key, value) of every record in a fetch, as a consumer reads."""
    records = MemoryRecords(fetched)
    out = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.validate_crc()
        out += [(r.offset, r.timestamp, r.key, r.value) for r in batch]
    return out


@st.composite
def partitions(draw: st.DrawFn) -> list[Records]:
    parts = []
    for p in range(draw(st.integers(1, 4))):
        stamps = sorted(draw(st.lists(st.integers(0, 60), max_size=30)))
        parts.append([(1000 + ts, b"r%d-%d" % (p, i), b"v%d" % i) for i, ts in enumerate(stamps)])
    return parts


@settings(max_examples=60, deadline=None)
@given(parts=partitions(), window=st.integers(1, 25))
def test_steps_fetch_every_record_once_in_order_with_its_offset(
    parts: list[Records], window: int
) -> None:
    """Every record of a partition comes in exactly one step, in its order, at the offset
    of its place, with its timestamp, key and value; a step's clock is past the records
    it carries."""
    read: dict[int, list[tuple[int, int, bytes | None, bytes | None]]] = {}
    for now, fetched in steps_bench.steps(parts, window):
        for p, data in fetched:
            got = _read(data)
            assert all(ts < now for _, ts, _, _ in got)
            read.setdefault(p, []).extend(got)
    for p, records in enumerate(parts):
        want = [(i, ts, k, v) for i, (ts, k, v) in enumerate(records)]
        assert read.get(p, []) == want


def test_steps_write_one_batch_per_tick() -> None:
    """Records stamped in different 2 ms ticks of one step are separate batches, as the
    generator publishes them; those of one tick share a batch."""
    records = [(1000, b"a", b"1"), (1001, b"b", b"2"), (1002, b"c", b"3"), (1005, b"d", b"4")]
    (_, fetched), *_ = steps_bench.steps([records], window_ms=10)
    data = MemoryRecords(fetched[0][1])
    sizes = []
    while data.has_next():
        sizes.append(len(list(data.next_batch())))
    assert sizes == [2, 1, 1]


def test_adjacent_puts_a_requests_members_side_by_side_over_the_same_span() -> None:
    """The same records, those of one request id next to each other, stamped evenly from
    the first record's time, in non-decreasing order."""
    records = [(100, b"x", b"1"), (103, b"y", b"2"), (105, b"x", b"3"), (110, b"y", b"4")]
    (out,) = steps_bench.adjacent([records])
    assert [(k, v) for _, k, v in out] == [(b"x", b"1"), (b"x", b"3"), (b"y", b"2"), (b"y", b"4")]
    stamps = [ts for ts, _, _ in out]
    assert stamps == sorted(stamps)
    assert stamps[0] == 100
    assert stamps[-1] < 110
