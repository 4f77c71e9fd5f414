"""The input consumer's records without a ``ConsumerRecord`` each: where the extension
is there, the compiled parser's runs, read in place; else aiokafka's parsed records,
handed over a whole record batch at a time.

aiokafka's fetcher turns each record it parsed into a ``ConsumerRecord``: a dataclass of
eleven fields, two ``len`` calls and a tuple of the headers. The worker reads five of
them (``offset``, ``timestamp``, ``key``, ``value``, ``headers``) and knows the topic and
partition from ``getmany``'s keys (``Engine.step_runs``). At full load making those
objects took 6-7 % of the worker's CPU.

``install`` makes a started consumer hand over the record objects its fetcher parsed
(aiokafka's ``DefaultRecord``, which has those five attributes) instead. It also takes
each record batch's records in one call (``list(batch)``, in aiokafka's compiled
parser) and hands them over through ``itertools.chain``, so no Python code runs per
record between the parser and ``getall``: aiokafka's generator resumed once per record,
compared its offset and moved the fetch position, which cost about 0.2 us a record.

What is skipped stays aiokafka's rule, copied per batch from its ``_unpack_records``
(the pinned minor, see pyproject.toml): the CRC check, control batches, aborted
transactions under ``read_committed``, the records below the fetch position. The fetch
position ``getall`` moves the partition to is the one aiokafka's generator would have
had, record for record (a property: the offset after the last record handed over). A
batch's records come in increasing offsets (the broker refuses a batch whose inner
offsets are not consecutive, compaction only removes records), so only a batch whose
first record is below the fetch position is filtered record by record.

The CRC check is the compiled one where the extension is there (``native``): every
batch of a fetched partition at once, with the CPU's CRC-32C instruction, instead of
aiokafka's table in C per batch (2.5 % of the worker's CPU at full load). For it the
fetcher makes ``FetchedRecords`` (aiokafka's ``MemoryRecords``, keeping the fetched
bytes) in place of ``MemoryRecords``; the check raises at the same batch as aiokafka's.

The compiled parser (``native.Fetched``, native/src/runs.rs) goes further: it takes a
fetched partition's bytes whole as the fetcher stores it, and ``getall`` hands over a
``native.Run`` of its records, which the decoder and the join read in place. No
``DefaultRecord``, key or value ``bytes`` is made per record, and no Python code runs
per record in ``getall`` (aiokafka's loop appends each record to a list); a record
object (``FetchedRecord``) is made only for a record someone indexes, one the Python
decoder or the dead-letter topic takes. aiokafka's parse and freeing of its records cost
about 0.6 us a record, 9 % of the worker's CPU at full load. The parser takes only
what it is sure of: v2 batches, uncompressed, their CRCs and framing as aiokafka checks
them, and a fetch that lists no aborted transaction (it skips control batches; skipping
aborted ones stays aiokafka's). Anything else stays with the iterator above, which then
decompresses, skips, or raises where aiokafka raises.

It hooks aiokafka's internals: the fetcher's buffer of fetched partitions, the class
of the record iterator it keeps for each (or the iterator itself, replaced by the
parser's), the name ``MemoryRecords`` in aiokafka's fetcher module and
``FetchResult.getall`` (both for every consumer in the process; the class only keeps one
attribute more, and ``getall`` is aiokafka's own for any partition not the parser's).
Where those are not as expected, or the consumer deserialises keys or values itself, it
installs nothing and the consumer returns ``ConsumerRecord``s, which the engine reads
just as well.
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Iterator
from itertools import chain
from operator import length_hint
from typing import Any

import aiokafka.consumer.fetcher as fetcher_module
import aiokafka.errors as errors
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords
from aiokafka.record.memory_records import MemoryRecords

from worker import native

log = logging.getLogger(__name__)

_NOTHING: Iterator[Any] = iter(())


class FetchedRecords(MemoryRecords):  # type: ignore[misc]  # aiokafka's is final, untyped
    """aiokafka's record set of a fetched partition, keeping the bytes it parses
    (``data``) for the compiled parser and CRC check."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


def parsed(records: Any, position: int) -> Any:
    """The compiled parser's records (``native.Fetched``) of a fetched partition's
    iterator not started, from fetch ``position`` on; None where aiokafka's iterator is
    to take them: no extension, bytes not kept, aborted transactions listed (the
    compiled parser skips control batches but does not skip aborted ones), or record
    sets it does not cover (compressed, old formats, a CRC or framing aiokafka refuses)."""
    data = getattr(records._records, "data", None)
    if (
        native.Fetched is None
        or type(data) is not bytes
        or records._aborted_transactions
        or records._aborted_producers
    ):
        return None
    return native.Fetched.parse(data, position, bool(records._check_crcs))


def first_corrupt(records: Any) -> int | None:
    """The base offset of the first batch of ``records`` whose CRC does not match (-1:
    none); None where the compiled check does not cover them (then each batch is checked
    as aiokafka checks it)."""
    data = getattr(records, "data", None)
    if native.first_corrupt_batch is None or type(data) is not bytes:
        return None
    return native.first_corrupt_batch(data)


class RawPartitionRecords(PartitionRecords):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's iterator over one fetched partition, yielding its parsed records as
    they are: its own ``_unpack_records`` calls this per record it hands over. The class
    of an iterator already started (see ``raw``)."""

    def _consumer_record(self, tp: Any, record: Any) -> Any:
        return record

    def __iter__(self) -> Any:
        # The generator itself, not this object: the fetcher's loop then resumes it
        # directly instead of through a Python ``__next__`` per record. ``__next__`` (for
        # ``getone``) still drops the finished generator as aiokafka's does.
        return self._records_iterator if self._records_iterator is not None else iter(())


class BatchPartitionRecords(RawPartitionRecords):
    """The same records at the same positions, a batch's records parsed in one call and
    handed over through ``itertools.chain``: ``_records_iterator`` is that chain."""

    # Where a batch being handed over started (aiokafka's next_fetch_offset before it),
    # its records, and the iterator over them that the chain is taking from.
    _position: int
    _batch: list[Any]
    _left: Iterator[Any]

    @property
    def next_fetch_offset(self) -> int:
        """The offset after the last record handed over, else where the batch started."""
        taken = len(self._batch) - length_hint(self._left)
        return self._batch[taken - 1].offset + 1 if taken else self._position

    @next_fetch_offset.setter
    def next_fetch_offset(self, offset: int) -> None:
        self._position = offset

    def _batches(self) -> Iterator[Iterator[Any]]:
        """Per batch to hand over, an iterator over its records: aiokafka's
        ``_unpack_records`` a batch at a time."""
        tp, records = self._tp, self._records
        corrupt = first_corrupt(records) if self._check_crcs else -1
        while records.has_next():
            batch = records.next_batch()
            if batch.base_offset == corrupt or (corrupt is None and not batch.validate_crc()):
                # The records are fetched again; nothing of this batch was handed over.
                raise errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if self._isolation_level == READ_COMMITTED and batch.producer_id is not None:
                self._consume_aborted_up_to(batch.base_offset)
                if batch.is_control_batch and self._contains_abort_marker(batch):
                    self._aborted_producers.discard(batch.producer_id)
                if batch.is_transactional and batch.producer_id in self._aborted_producers:
                    self._position = batch.next_offset
                    continue
            if batch.is_control_batch:  # skipped at either isolation level
                self._position = batch.next_offset
                continue
            taken = list(batch)
            if taken and taken[0].offset < self._position:
                taken = self._from_position(taken)
            self._batch, self._left = taken, iter(taken)
            yield self._left
            # The chain took them all: the position moves past the batch (its last
            # offset survives compaction), as aiokafka's does once it resumes.
            self._batch, self._left = [], _NOTHING
            self._position = batch.next_offset

    def _from_position(self, batch: list[Any]) -> list[Any]:
        # aiokafka's per-record test: a fetch that started inside this batch.
        kept, position = [], self._position
        for record in batch:
            if record.offset >= position:
                kept.append(record)
                position = record.offset + 1
        return kept


class _RawResults(OrderedDict[Any, Any]):
    """The fetcher's buffer of fetched partitions (``Fetcher._records``, an OrderedDict),
    giving each fetched partition's iterator the class above as it is stored."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        raw(result)
        super().__setitem__(tp, result)


def raw(result: Any) -> None:
    """Make a fetched partition's iterator yield parsed records (errors are left alone).

    A class swap, not a new iterator: the one aiokafka made keeps its state (the fetch
    position, the aborted producers). One that has not started takes its batches whole
    (``BatchPartitionRecords``); one already started keeps its generator, which looks
    ``_consumer_record`` up on each record (``RawPartitionRecords``)."""
    if type(result) is not FetchResult:  # the exact test aiokafka's fetched_records makes
        return
    records = result._partition_records
    if type(records) is not PartitionRecords:
        return
    generator = records._records_iterator
    if (
        generator is None
        or inspect.getgeneratorstate(generator) != inspect.GEN_CREATED
        or "next_fetch_offset" not in records.__dict__  # the position is not as expected
    ):
        records.__class__ = RawPartitionRecords
        return
    position = records.__dict__["next_fetch_offset"]
    fetched = parsed(records, position)
    if fetched is not None:
        # aiokafka's generator (not started) and its iterator refer to each other: left
        # so, the cycle would keep the fetched bytes until a full collection.
        records._records_iterator = None
        result._partition_records = fetched
        return
    del records.next_fetch_offset
    records.__class__ = BatchPartitionRecords
    records._position, records._batch, records._left = position, [], _NOTHING
    records._records_iterator = chain.from_iterable(records._batches())


_aiokafka_getall = FetchResult.getall


def getall(self: FetchResult, max_records: int | None = None) -> Any:
    """``FetchResult.getall``: a parsed partition's records as one ``native.Run`` (no
    Python code per record), the position moved as aiokafka's loop moves it (see
    ``Fetched.take``); any other partition's through aiokafka's own."""
    records = self._partition_records
    if native.Fetched is None or type(records) is not native.Fetched:
        return _aiokafka_getall(self, max_records)
    if not self.check_assignment(self._topic_partition):
        return []
    run, done = records.take(max_records)
    self._update_position()
    if done:
        self._partition_records = None
    return run


def install(consumer: Any) -> bool:
    """Make a started ``consumer``'s ``getmany`` return parsed records; True if it does.

    Call it after ``start``, before the first ``getmany``. A consumer with a key or value
    deserializer, or an aiokafka whose fetcher is not laid out as expected, is left as
    it is (False)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    buffered = getattr(fetcher, "_records", None)
    if (
        type(buffered) is not OrderedDict
        or getattr(fetcher, "_key_deserializer", True) is not None
        or getattr(fetcher, "_value_deserializer", True) is not None
        or not callable(getattr(PartitionRecords, "_consumer_record", None))
        or not callable(getattr(PartitionRecords, "_consume_aborted_up_to", None))
        or not callable(getattr(PartitionRecords, "_contains_abort_marker", None))
    ):
        log.info("the consumer's fetcher is not as expected: records stay ConsumerRecords")
        return False
    if fetcher_module.MemoryRecords is MemoryRecords:
        fetcher_module.MemoryRecords = FetchedRecords
    FetchResult.getall = getall
    results = _RawResults()
    for tp, result in buffered.items():
        results[tp] = result
    fetcher._records = results
    return True
