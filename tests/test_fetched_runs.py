"""The compiled parser of a fetched partition (``native.Fetched``, native/src/runs.rs):
where it takes a partition, the runs ``getall`` hands over hold aiokafka's records at
aiokafka's positions; whatever it is not sure of (aborted transactions listed, compressed
or old-format batches, a CRC or framing aiokafka refuses) it leaves to aiokafka's
iterator. tests/test_raw_records.py compares the two through ``getall`` and ``getone``
for logs with aborted transactions too."""

from __future__ import annotations

import gc
import struct
import weakref
from typing import Any

import pytest
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_raw_records import (
    ATTRIBUTES,
    TP,
    _Assignment,
    batch,
    batch_starts,
    log,
    pieces,
)
from worker import native
from worker.runtime.raw_records import FetchedRecords, _aiokafka_getall, getall, raw

pytestmark = pytest.mark.skipif(native.Fetched is None, reason="the extension is not built")

LOG_APPEND_TIME = 0x08


def fields(record: Any) -> tuple[Any, ...]:
    return (
        record.offset,
        record.timestamp,
        record.timestamp_type,
        record.key,
        record.value,
        tuple(record.headers),
    )


def with_crc(data: bytearray, start: int = 0) -> bytes:
    """``data`` with the CRC of its batch at ``start`` recomputed."""
    (length,) = struct.unpack_from(">i", data, start + 8)
    covered = bytes(data[start + ATTRIBUTES : start + 12 + length])
    struct.pack_into(">I", data, start + ATTRIBUTES - 4, calc_crc32c(covered))
    return bytes(data)


def log_append_time(data: bytes) -> bytes:
    """Every batch of ``data`` with its timestamp type set to the broker's append time."""
    out = bytearray(data)
    for pos in batch_starts(data):
        (attributes,) = struct.unpack_from(">h", out, pos + ATTRIBUTES)
        struct.pack_into(">h", out, pos + ATTRIBUTES, attributes | LOG_APPEND_TIME)
        with_crc(out, pos)
    return bytes(out)


def result_of(data: bytes, start: int, aborted: list[tuple[int, int]], kept: bool) -> Any:
    kept_ = FetchedRecords(data) if kept else MemoryRecords(data)
    records = PartitionRecords(TP, kept_, aborted, start, None, None, True, 1)
    return FetchResult(TP, assignment=_Assignment(start), partition_records=records, backoff=0)


def drained(result: Any, max_records: int | None, take: Any) -> list[Any]:
    """Each ``getall`` call's records and the position after it, until none are left."""
    calls = []
    while result.has_more():
        got = [fields(r) for r in take(result, max_records)]
        calls.append((got, result._assignment.state.position))
    return calls


committed = pieces.map(lambda drawn: [(kind, batches, True) for kind, batches, _ in drawn])


@settings(max_examples=150)
@given(committed, st.integers(0, 30), st.none() | st.integers(1, 9), st.booleans())
def test_runs_hold_aiokafkas_records_at_its_positions(
    drawn: Any, start: int, max_records: int | None, appended: bool
) -> None:
    """A log of plain batches and committed transactions (control batches among them),
    from a fetch position that may fall inside a batch, in calls of at most
    ``max_records``: each run holds the records aiokafka's ``getall`` takes (offset,
    timestamp of either type, key, value, headers), and the position after each call is
    the one it leaves."""
    data, aborted = log(drawn)
    assert aborted == []
    if appended:
        data = log_append_time(data)
    ours = result_of(data, start, [], kept=True)
    raw(ours)
    assert type(ours._partition_records) is native.Fetched
    theirs = result_of(data, start, [], kept=False)
    assert drained(ours, max_records, getall) == drained(theirs, max_records, _aiokafka_getall)


def test_a_fetch_listing_aborted_transactions_stays_with_aiokafka() -> None:
    """Where the fetch lists an aborted transaction, aiokafka's iterator takes the
    partition: the compiled parser does not skip aborted batches."""
    data = batch(0, [(5, b"k", b"v", [])], producer_id=7)
    result = result_of(data, 0, [(7, 0)], kept=True)
    raw(result)
    assert type(result._partition_records) is not native.Fetched


def test_the_iterator_replaced_is_freed_at_once() -> None:
    """aiokafka's iterator that the parser replaces is freed with its last reference,
    not left in a cycle with its generator: the fetched bytes would stay until a full
    collection (with a million requests pending, 500 bytes each more)."""
    result = result_of(batch(0, [(5, b"k", b"v", [])]), 0, [], kept=True)
    replaced = weakref.ref(result._partition_records)
    gc.disable()
    try:
        raw(result)
        assert replaced() is None
    finally:
        gc.enable()


def compressed(codec: int) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    builder.append(0, 5, b"k", b"v" * 200, [])
    return bytes(builder.build())


def test_what_it_does_not_cover_is_left_to_aiokafka() -> None:
    """A compressed batch, an old-format one, a CRC that does not match: ``parse``
    gives None, and the caller keeps aiokafka's iterator."""
    assert native.Fetched is not None
    old = bytearray(batch(0, [(5, b"k", b"v", [])]))
    old[16] = 1  # the magic byte
    bad_crc = bytearray(batch(0, [(5, b"k", b"v", [])]))
    bad_crc[17] ^= 1  # the CRC itself
    for data in (compressed(1), bytes(old), bytes(bad_crc)):
        assert native.Fetched.parse(data, 0, True) is None
    # Unchecked where the consumer does not check CRCs.
    assert native.Fetched.parse(bytes(bad_crc), 0, False) is not None


def aiokafkas(data: bytes, start: int) -> list[Any] | None:
    """aiokafka's records of ``data`` from ``start`` on, None where it raises."""
    records = PartitionRecords(TP, MemoryRecords(data), [], start, None, None, True, 0)
    try:
        return [fields(r) for r in records]
    except (CorruptRecordException, UnicodeDecodeError):
        return None


@settings(max_examples=300)
@given(committed, st.data())
def test_a_framing_aiokafka_refuses_is_never_taken(drawn: Any, data: st.DataObject) -> None:
    """One byte of a batch's records changed and its CRC made to match again (a broken
    producer, not the network): the compiled parser takes the batch only where it reads
    what aiokafka reads, and leaves every batch aiokafka refuses."""
    log_, _ = log(drawn)
    raw_log = bytearray(log_)
    starts = batch_starts(log_)
    start = data.draw(st.sampled_from(starts))
    end = starts[starts.index(start) + 1] if start != starts[-1] else len(raw_log)
    where = data.draw(st.integers(start + 61, end - 1))  # the records, past the header
    raw_log[where] ^= data.draw(st.integers(1, 255))
    changed = with_crc(raw_log, start)
    parsed = native.Fetched.parse(changed, 0, True)
    theirs = aiokafkas(changed, 0)
    if theirs is None:
        assert parsed is None
    elif parsed is not None:
        run, done = parsed.take(None)
        assert done
        assert [fields(r) for r in run] == theirs


def test_a_run_is_a_sequence_of_records() -> None:
    """A run has a length, its records by index (negative ones too), raises IndexError
    past its end, iterates in order and is false when empty."""
    rows = [(5, b"k0", b"v0", []), (6, None, None, [("h", b"1")]), (7, b"k2", b"", [])]
    fetched = native.Fetched.parse(batch(40, rows), 41, True)
    run, done = fetched.take(5)
    assert done
    assert len(run) == 2
    assert fields(run[0]) == (41, 6, 0, None, None, (("h", b"1"),))
    assert fields(run[-1]) == fields(run[1]) == (42, 7, 0, b"k2", b"", ())
    with pytest.raises(IndexError):
        run[2]
    with pytest.raises(IndexError):
        run[-3]
    assert [r.offset for r in run] == [41, 42]
    empty, _ = fetched.take(5)
    assert not empty
    assert fetched.next_fetch_offset == 43
