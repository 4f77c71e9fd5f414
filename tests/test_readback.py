"""The read-back's pure bookkeeping: the mark each commit stores (worker/runtime/
readback.py). The read-back itself runs against the broker in the at-least-once chaos
test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from worker.config import build_config
from worker.runtime import readback
from worker.runtime.readback import Marks, ReadBack, decode_mark, encode_mark

TP = TopicPartition("in", 0)


def test_a_mark_round_trips_through_the_commit_metadata() -> None:
    """What encode_mark stores, decode_mark reads back for the same output topic."""
    assert decode_mark(encode_mark("fused", 123), "fused") == 123


def test_a_mark_of_another_output_topic_or_writer_is_ignored() -> None:
    """Metadata for another output topic, of another writer, or none gives no mark."""
    assert decode_mark(encode_mark("other", 5), "fused") is None
    assert decode_mark("", "fused") is None
    assert decode_mark("not json", "fused") is None
    assert decode_mark('{"v": 99, "output": "fused", "mark": 5}', "fused") is None


def test_a_commit_takes_the_mark_of_the_latest_snapshot_at_or_below_it() -> None:
    """A commit held back below the position stores an earlier snapshot's mark: results
    published since may belong to requests read again from the commit."""
    marks = Marks()
    marks.record(TP, 100, 10)
    marks.record(TP, 200, 20)
    marks.record(TP, 300, 30)
    assert marks.mark_for(TP, 250) == 20
    assert marks.mark_for(TP, 300) == 30


def test_a_commit_below_every_snapshot_has_no_mark() -> None:
    """Without a snapshot at or below the commit there is no safe mark."""
    marks = Marks()
    marks.record(TP, 100, 10)
    assert marks.mark_for(TP, 99) is None


def test_the_start_of_an_assignment_is_a_snapshot() -> None:
    """The committed offset and its mark at assignment serve the first commits."""
    marks = Marks()
    marks.start(TP, 50, 7)
    marks.record(TP, 400, 40)
    assert marks.mark_for(TP, 60) == 7


def test_a_floor_caps_the_marks_until_the_position_passes_its_end() -> None:
    """Requests read back at assignment may still have events below the input's end
    then: their results (after the floor) stay in every mark until the position passes
    that end; from there snapshots are taken as they are."""
    marks = Marks()
    marks.floor(TP, 5, until=150)
    marks.record(TP, 100, 50)
    assert marks.mark_for(TP, 100) == 5
    marks.record(TP, 150, 60)
    assert marks.mark_for(TP, 150) == 60


def test_revoked_partitions_are_forgotten() -> None:
    """forget drops the snapshots of partitions no longer assigned."""
    marks = Marks()
    marks.record(TP, 100, 10)
    marks.forget([TopicPartition("in", 1)])
    assert marks.mark_for(TP, 100) is None


def read_back() -> ReadBack:
    """A read-back whose output is known to be co-partitioned (no broker asked)."""
    config = build_config({"fusion": {"labels": ["x", "y"]}, "models": [{"name": "a"}]})
    rb = ReadBack(config, lambda: None)
    rb._enabled = True
    return rb


def test_a_snapshot_takes_the_end_of_its_acknowledged_outputs() -> None:
    """The mark of a snapshot is where the outputs captured with its positions ended,
    from their acknowledgements: no request to the broker."""
    rb = read_back()
    rb.snapshot({TP: 100}, {0: 42})
    assert rb.marks.mark_for(TP, 100) == 42


def test_a_partition_without_outputs_since_keeps_the_last_end_known() -> None:
    """An output partition nothing was written to since keeps the end seen last: every
    result written after it lands at or after it."""
    rb = read_back()
    rb.snapshot({TP: 100}, {0: 42, 1: 7})
    rb.snapshot({TP: 200}, {1: 9})
    assert rb.marks.mark_for(TP, 200) == 42


def test_a_snapshot_without_any_end_known_takes_no_mark() -> None:
    """Without an acknowledged output nor an end read before, there is no safe mark:
    the commit stores an older one, or none."""
    rb = read_back()
    rb.snapshot({TP: 100}, {})
    assert rb.marks.mark_for(TP, 100) is None


def test_a_snapshot_with_the_read_back_off_takes_nothing() -> None:
    """Without a co-partitioned output there is nothing to mark."""
    rb = read_back()
    rb._enabled = False
    rb.snapshot({TP: 100}, {0: 42})
    assert rb.marks.mark_for(TP, 100) is None


async def test_finding_where_to_read_back_beats_the_liveness_clock() -> None:
    """The read-back at assignment runs inside the assignment callback, where the loop
    cannot beat: while it waits on the broker (here 0.35 s) it beats itself, so a
    liveness timeout shorter than that wait does not call the worker stuck."""
    beats: list[float] = []
    config = build_config({"fusion": {"labels": ["x", "y"]}, "models": [{"name": "a"}]})
    rb = ReadBack(config, lambda: beats.append(time.monotonic()))

    async def slow_locate(*_: object) -> None:
        await asyncio.sleep(0.35)

    rb._locate = slow_locate  # type: ignore[method-assign]
    await rb.assigned([TP], {0}, {}, 0)
    assert len(beats) >= 3


def test_the_reader_retries_sooner_than_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-back's reader waits at most READER_RETRY_BACKOFF_MS between retries: its
    first request about each topic finds no metadata and waits one backoff, and with the
    worker's (500 ms by default) an assignment with nothing to read back took a second."""
    made: list[dict[str, Any]] = []

    class Reader:
        def __init__(self, **options: Any) -> None:
            made.append(options)

        async def start(self) -> None:
            pass

    monkeypatch.setattr(readback, "AIOKafkaConsumer", Reader)
    config = build_config(
        {
            "kafka": {"retry_backoff_ms": 500},
            "fusion": {"labels": ["x", "y"]},
            "models": [{"name": "a"}],
        }
    )
    asyncio.run(ReadBack(config, lambda: None)._start_reader())
    assert made[0]["retry_backoff_ms"] == readback.READER_RETRY_BACKOFF_MS < 500
