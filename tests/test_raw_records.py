"""The input consumer's parsed records (worker/runtime/raw_records.py) are the records
aiokafka's own iterator hands over, with the same fetch positions: transactions aborted
or committed, control batches, a fetch position inside a batch, either isolation level,
a batch whole (the class changed before the iteration) or record by record (part way
through), a corrupt batch. ``tests/integration/test_raw_records.py`` reads
a real broker's topic through it."""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Any

import aiokafka.consumer.fetcher as fetcher_module
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import FetchError, FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.runtime.raw_records import (
    BatchPartitionRecords,
    FetchedRecords,
    RawPartitionRecords,
    _aiokafka_getall,
    getall,
    install,
    raw,
)

TP = TopicPartition("in", 0)
READ_UNCOMMITTED, READ_COMMITTED = 0, 1
# The control bit of a batch's attributes, which sit after the 17-byte header and the CRC.
CONTROL, ATTRIBUTES = 0x20, 21

Header = tuple[str, bytes]
Row = tuple[int, bytes | None, bytes | None, list[Header]]


def batch(base: int, rows: list[Row], producer_id: int = -1, control: bool = False) -> bytes:
    """One v2 record batch at offset ``base``; transactional with a producer id."""
    txn = producer_id >= 0
    builder = DefaultRecordBatchBuilder(
        2, 0, int(txn), producer_id, 0 if txn else -1, 0 if txn else -1, 1 << 20
    )
    for delta, (ts, key, value, headers) in enumerate(rows):
        builder.append(delta, ts, key, value, headers)
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base)
    if control:
        (attributes,) = struct.unpack_from(">h", data, ATTRIBUTES)
        struct.pack_into(">h", data, ATTRIBUTES, attributes | CONTROL)
        struct.pack_into(">I", data, ATTRIBUTES - 4, calc_crc32c(bytes(data[ATTRIBUTES:])))
    return bytes(data)


def marker(base: int, producer_id: int, commit: bool) -> bytes:
    """A transaction's end: a control batch with one ABORT (0) or COMMIT (1) record."""
    key = struct.pack(">hh", 0, int(commit))
    return batch(base, [(0, key, struct.pack(">hi", 0, 0), [])], producer_id, control=True)


rows = st.lists(
    st.tuples(
        st.integers(0, 1_800_000_000_000),
        st.one_of(st.none(), st.binary(max_size=12)),
        st.one_of(st.none(), st.binary(max_size=40)),
        st.lists(
            st.tuples(st.sampled_from(["traceparent", "h"]), st.binary(max_size=8)), max_size=2
        ),
    ),
    min_size=1,
    max_size=4,
)
# Each piece: plain records, or a transaction (its batches, then committed or aborted).
pieces = st.lists(
    st.one_of(
        st.tuples(st.just("plain"), st.lists(rows, min_size=1, max_size=1), st.just(False)),
        st.tuples(st.just("txn"), st.lists(rows, min_size=1, max_size=3), st.booleans()),
    ),
    min_size=1,
    max_size=6,
)


def log(drawn: list[tuple[str, list[list[Row]], bool]]) -> tuple[bytes, list[tuple[int, int]]]:
    """A partition's log from the drawn pieces, and its aborted transactions (producer id,
    first offset) as a fetch response lists them. Two producers take turns, so a
    producer's transaction may follow one of its own that was aborted."""
    data, aborted, offset = b"", [], 0
    for n, (kind, batches, commit) in enumerate(drawn):
        producer_id = 100 + n % 2 if kind == "txn" else -1
        first = offset
        for rows_ in batches:
            data += batch(offset, rows_, producer_id)
            offset += len(rows_)
        if kind == "txn":
            data += marker(offset, producer_id, commit)
            offset += 1
            if not commit:
                aborted.append((producer_id, first))
    return data, aborted


def batch_starts(data: bytes) -> list[int]:
    """Where each whole batch of ``data`` starts (its length field follows the offset)."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 12 + struct.unpack_from(">i", data, pos + 8)[0]
    return starts


def fields(record: Any) -> tuple[Any, ...]:
    return (record.offset, record.timestamp, record.key, record.value, tuple(record.headers))


def read(
    data: bytes, aborted: list[tuple[int, int]], start: int, isolation: int, swap_at: int
) -> tuple[list[tuple[tuple[Any, ...], int]], int, list[str]]:
    """Every record a partition's iterator hands over, with the fetch position after each
    and at the end, and the class name of each; the iterator's class is changed to the
    raw one after ``swap_at`` records (never when negative): before the first, the
    batch-wise one, later the record-by-record one."""
    kept = FetchedRecords(data) if swap_at >= 0 else MemoryRecords(data)
    records = PartitionRecords(TP, kept, aborted, start, None, None, True, isolation)
    result = FetchResult(TP, assignment=None, partition_records=records, backoff=0)
    out, kinds = [], []
    if swap_at == 0:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(native, "Fetched", None)  # the batch-wise iterator, not the parser
            raw(result)
        assert type(records) is BatchPartitionRecords
    for n, record in enumerate(records):
        out.append((fields(record), records.next_fetch_offset))
        kinds.append(type(record).__name__)
        if n + 1 == swap_at:
            raw(result)
            assert type(records) is RawPartitionRecords
    return out, records.next_fetch_offset, kinds


@settings(max_examples=150)
@given(pieces, st.integers(0, 30), st.sampled_from([READ_UNCOMMITTED, READ_COMMITTED]), st.data())
def test_the_raw_records_are_aiokafkas_at_the_same_positions(
    drawn: Any, start: int, isolation: int, data: st.DataObject
) -> None:
    """The parsed records (offset, timestamp, key, value, headers) and the fetch position
    after each are aiokafka's ``ConsumerRecord``s' and positions, whenever the class is
    changed: transactions committed and aborted, control batches skipped, a start inside
    a batch."""
    log_, aborted = log(drawn)
    swap_at = data.draw(st.integers(0, 12))
    ours, position, kinds = read(log_, aborted, start, isolation, swap_at)
    theirs, their_position, _ = read(log_, aborted, start, isolation, -1)
    assert ours == theirs
    assert position == their_position
    before = min(swap_at, len(kinds))
    assert kinds == ["ConsumerRecord"] * before + ["DefaultRecord"] * (len(kinds) - before)


class _State:
    """A partition's subscription state, as ``FetchResult`` reads and moves it."""

    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def consumed_to(self, position: int) -> None:
        self.position = position


class _Assignment:
    active = True

    def __init__(self, position: int) -> None:
        self.state = _State(position)

    def state_value(self, tp: Any) -> _State:
        return self.state


def drain(
    data: bytes, aborted: list[tuple[int, int]], start: int, max_records: int, raw_: bool
) -> list[tuple[Any, int]]:
    """What ``getmany`` takes of one fetched partition: ``getall(max_records)`` until it
    has no more, each call's records and the position after it; with ``max_records`` 0,
    what ``getone`` takes, each record (None at the end) and the position after it.
    ``raw_``: through ``raw`` and the installed ``getall`` (the compiled parser's runs
    where it takes the partition), else aiokafka's alone."""
    kept = FetchedRecords(data) if raw_ else MemoryRecords(data)
    records = PartitionRecords(TP, kept, aborted, start, None, None, True, 1)
    assignment = _Assignment(start)
    result = FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
    if raw_:
        raw(result)
    calls: list[tuple[Any, int]] = []
    while result.has_more():
        got: Any
        if max_records:
            take = getall if raw_ else _aiokafka_getall
            got = [fields(r) for r in take(result, max_records)]
        else:
            one = result.getone()
            got = None if one is None else fields(one)
        calls.append((got, assignment.state.position))
    return calls


@settings(max_examples=100)
@given(pieces, st.integers(0, 30), st.integers(1, 9))
def test_getall_takes_the_same_records_and_positions(
    drawn: Any, start: int, max_records: int
) -> None:
    """Fetched in calls of at most ``max_records`` (read_committed), each call takes the
    records aiokafka's takes and leaves the partition at the same position."""
    log_, aborted = log(drawn)
    assert drain(log_, aborted, start, max_records, True) == drain(
        log_, aborted, start, max_records, False
    )


@settings(max_examples=60)
@given(pieces, st.integers(0, 30))
def test_getone_takes_the_same_records_and_positions(drawn: Any, start: int) -> None:
    """Taken one record at a time (``getone``, read_committed), the batch-wise iterator
    hands over aiokafka's records and leaves the partition at the same positions."""
    log_, aborted = log(drawn)
    assert drain(log_, aborted, start, 0, True) == drain(log_, aborted, start, 0, False)


def test_a_raw_record_is_aiokafkas_parsed_one() -> None:
    """After ``raw`` the iterator yields aiokafka's parsed record objects, not
    ``ConsumerRecord``s (what saves the work)."""
    data = batch(0, [(5, b"k", b"v", [("h", b"1")])])
    records = PartitionRecords(TP, MemoryRecords(data), [], 0, None, None, True, READ_UNCOMMITTED)
    raw(FetchResult(TP, assignment=None, partition_records=records, backoff=0))
    (record,) = list(records)
    assert type(record).__name__ == "DefaultRecord"
    assert fields(record) == (0, 5, b"k", b"v", (("h", b"1"),))


@pytest.mark.parametrize("kept", [True, False])
@pytest.mark.parametrize("batch_wise", [True, False])
def test_a_corrupt_batch_raises_after_the_records_before_it(batch_wise: bool, kept: bool) -> None:
    """A batch whose CRC does not match raises ``CorruptRecordException`` after the
    records of the batches before it, at their position, as aiokafka's iterator does;
    then the iterator is finished. Checked by the compiled check (the fetched bytes
    kept) and by aiokafka's per batch."""
    bad = bytearray(batch(2, [(7, b"k", b"v2", []), (8, b"k", b"v3", [])]))
    bad[bad.rindex(b"v3")] ^= 0x01  # "w3": a value still parsed, which only the CRC flags
    data = batch(0, [(5, b"k", b"v0", []), (6, b"k", b"v1", [])]) + bytes(bad)

    def read_until_error(swap: bool) -> tuple[list[Any], int]:
        kept_ = FetchedRecords(data) if swap and kept else MemoryRecords(data)
        records = PartitionRecords(TP, kept_, [], 0, None, None, True, 0)
        result = FetchResult(TP, assignment=None, partition_records=records, backoff=0)
        if swap and batch_wise:
            raw(result)
        got = []

        def take_all() -> None:
            for record in records:
                got.append(fields(record))
                if swap and not batch_wise and type(records) is PartitionRecords:
                    raw(result)  # the record-by-record class, after the first record

        with pytest.raises(CorruptRecordException):
            take_all()
        assert list(records) == []
        return got, records.next_fetch_offset

    ours, theirs = read_until_error(True), read_until_error(False)
    assert ours == theirs
    assert [f[3] for f in ours[0]] == [b"v0", b"v1"]
    assert ours[1] == 2


def aiokafkas_first_corrupt(data: bytes) -> int:
    """The base offset of the first batch aiokafka's own check finds corrupt, else -1."""
    records = MemoryRecords(data)
    while records.has_next():
        checked = records.next_batch()
        if not checked.validate_crc():
            return int(checked.base_offset)
    return -1


@settings(max_examples=150)
@given(pieces, st.data())
def test_the_compiled_crc_check_finds_the_batch_aiokafkas_finds(
    drawn: Any, data: st.DataObject
) -> None:
    """One byte flipped in a partition's fetched batches (their base offset, CRC or what
    it covers), or none, and the last batch cut short as a fetch may cut it: the
    compiled check names the first batch whose CRC does not match, the one aiokafka's
    check names, or none. (A flipped length or magic byte changes how the batches are
    framed: aiokafka's parser rejects those, and ``test_the_compiled_crc_check_leaves_
    other_formats_to_aiokafka`` covers what the compiled check leaves.)"""
    assert native.first_corrupt_batch is not None
    log_, _ = log(drawn)
    raw_log = bytearray(log_)
    starts = batch_starts(log_)
    if data.draw(st.booleans()):
        start = data.draw(st.sampled_from(starts))
        end = starts[starts.index(start) + 1] if start != starts[-1] else len(log_)
        where = data.draw(st.integers(0, 7) | st.integers(17, end - start - 1))
        raw_log[start + where] ^= data.draw(st.integers(1, 255))
    cut = bytes(raw_log[: len(raw_log) - data.draw(st.integers(0, 20))])
    assert native.first_corrupt_batch(cut) == aiokafkas_first_corrupt(cut)


def test_the_compiled_crc_check_leaves_other_formats_to_aiokafka() -> None:
    """A record set with a batch of the old formats (magic 0 or 1), or one shorter than
    its header, is not checked by the compiled check (None): aiokafka checks it."""
    assert native.first_corrupt_batch is not None
    old_format = bytearray(batch(0, [(5, b"k", b"v", [])]))
    old_format[16] = 1  # the magic byte
    assert native.first_corrupt_batch(bytes(old_format)) is None
    short = struct.pack(">qi", 0, 8) + bytes(8)  # a length below the CRC's end
    assert native.first_corrupt_batch(short) is None
    assert native.first_corrupt_batch(b"") == -1


def test_an_iterator_without_its_position_attribute_keeps_the_generator() -> None:
    """An iterator whose fetch position is not the instance attribute aiokafka 0.14
    keeps is left to its own generator (the record-by-record class), not replaced."""
    records = PartitionRecords(
        TP, MemoryRecords(batch(0, [(5, b"k", b"v", [])])), [], 0, None, None, True, 0
    )
    del records.__dict__["next_fetch_offset"]
    raw(FetchResult(TP, assignment=None, partition_records=records, backoff=0))
    assert type(records) is RawPartitionRecords


def test_an_error_result_is_left_alone() -> None:
    """A fetch error in the buffer is stored as it is."""
    error = FetchError(error=RuntimeError("x"), backoff=0)
    raw(error)
    assert type(error) is FetchError


async def test_install_needs_a_started_consumer_without_deserializers() -> None:
    """A consumer not started, or one that deserialises values itself, keeps its
    ``ConsumerRecord``s: ``install`` says so and changes nothing."""

    class Fetcher:
        def __init__(self, value_deserializer: Any) -> None:
            self._records: OrderedDict[Any, Any] = OrderedDict()
            self._key_deserializer = None
            self._value_deserializer = value_deserializer

    class Consumer:
        def __init__(self, fetcher: Any) -> None:
            self._fetcher = fetcher

    unstarted = AIOKafkaConsumer()
    try:
        assert not install(unstarted)
    finally:
        await unstarted.stop()
    deserialising = Fetcher(bytes.decode)
    assert not install(Consumer(deserialising))
    assert type(deserialising._records) is OrderedDict
    plain = Fetcher(None)
    assert install(Consumer(plain))
    assert type(plain._records) is not OrderedDict
    # The fetcher now makes record sets that keep their bytes, for the compiled check.
    assert fetcher_module.MemoryRecords is FetchedRecords


def test_install_converts_what_was_already_fetched() -> None:
    """A partition fetched before ``install`` hands over parsed records too, and later
    ones are converted as the fetcher stores them."""
    data = batch(0, [(5, b"k", b"v", [])])

    def fetched() -> FetchResult:
        records = PartitionRecords(TP, MemoryRecords(data), [], 0, None, None, True, 0)
        return FetchResult(TP, assignment=None, partition_records=records, backoff=0)

    class Fetcher:
        _key_deserializer = None
        _value_deserializer = None

        def __init__(self) -> None:
            self._records: OrderedDict[Any, Any] = OrderedDict([(TP, fetched())])

    class Consumer:
        _fetcher = Fetcher()

    assert install(Consumer())
    buffered = Consumer._fetcher._records
    other = TopicPartition("in", 1)
    buffered[other] = fetched()
    for tp in (TP, other):
        assert type(buffered[tp]._partition_records) is BatchPartitionRecords
