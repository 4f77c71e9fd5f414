"""The input consumer's records as aiokafka parsed them, without a ``ConsumerRecord`` each.

aiokafka's fetcher turns each record it parsed into a ``ConsumerRecord``: a dataclass of
eleven fields, two ``len`` calls and a tuple of the headers. The worker reads five of
them (``offset``, ``timestamp``, ``key``, ``value``, ``headers``) and knows the topic and
partition from ``getmany``'s keys (``Engine.step_runs``). At full load making those
objects took 6-7 % of the worker's CPU.

``install`` makes a started consumer hand over the record objects its fetcher parsed
(aiokafka's ``DefaultRecord``, which has those five attributes) instead. Everything
else is aiokafka's own: which batches are skipped (control batches, aborted
transactions under ``read_committed``), the CRC check, the records below the fetch
position, the positions ``getmany`` moves to, ``max_records``.

It hooks aiokafka's internals (the pinned minor, see pyproject.toml): the fetcher's
buffer of fetched partitions and the class of the record iterator it keeps for each.
Where those are not as expected, or the consumer deserialises keys or values itself, it
installs nothing and the consumer returns ``ConsumerRecord``s, which the engine reads
just as well.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from aiokafka.consumer.fetcher import FetchResult, PartitionRecords

log = logging.getLogger(__name__)


class RawPartitionRecords(PartitionRecords):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's iterator over one fetched partition, yielding its parsed records as
    they are: its own ``_unpack_records`` calls this per record it hands over."""

    def _consumer_record(self, tp: Any, record: Any) -> Any:
        return record

    def __iter__(self) -> Any:
        # aiokafka's generator itself, not this object: the fetcher's loop then resumes it
        # directly instead of through a Python ``__next__`` per record. ``__next__`` (for
        # ``getone``) still drops the finished generator as aiokafka's does.
        return self._records_iterator if self._records_iterator is not None else iter(())


class _RawResults(OrderedDict[Any, Any]):
    """The fetcher's buffer of fetched partitions (``Fetcher._records``, an OrderedDict),
    giving each fetched partition's iterator the class above as it is stored."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        raw(result)
        super().__setitem__(tp, result)


def raw(result: Any) -> None:
    """Make a fetched partition's iterator yield parsed records (errors are left alone).

    A class swap, not a new iterator: the one aiokafka made keeps its state (its
    generator, the fetch position, the aborted producers), and the generator looks
    ``_consumer_record`` up on each record."""
    if type(result) is FetchResult:  # the exact test aiokafka's fetched_records makes
        records = result._partition_records
        if type(records) is PartitionRecords:
            records.__class__ = RawPartitionRecords


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
    ):
        log.info("the consumer's fetcher is not as expected: records stay ConsumerRecords")
        return False
    results = _RawResults()
    for tp, result in buffered.items():
        results[tp] = result
    fetcher._records = results
    return True
