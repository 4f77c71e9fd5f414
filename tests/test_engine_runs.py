"""The live step over runs of one topic partition (``Engine.step_runs``), as the worker
loop hands over what ``getmany`` returned: records with no topic or partition of their
own (worker/runtime/raw_records.py) give what ``step`` gives for the same records."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_engine import config, events, pred
from worker import native
from worker.engine import Engine, InRecord
from worker.fusion import Fuser
from worker.join import JoinTable
from worker.records import runs_of


@dataclass(frozen=True)
class Bare:
    """What aiokafka's parsed record has: no topic, no partition."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None
    headers: list[tuple[str, bytes]]


def bare(r: InRecord) -> Bare:
    return Bare(r.offset, r.key, r.value, r.timestamp, list(r.headers))


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2)), max_size=20))
def test_runs_cut_the_records_where_the_topic_partition_changes(
    places: list[tuple[str, int]],
) -> None:
    """The runs, joined, are the records in order; each run is of one topic partition
    and the next run's differs."""
    records = [InRecord(t, p, i, None, None) for i, (t, p) in enumerate(places)]
    runs = runs_of(records)
    assert [r for _, run in runs for r in run] == records
    assert all(r.topic == t and r.partition == p for (t, p), run in runs for r in run)
    assert all(a[0] != b[0] for a, b in itertools.pairwise(runs))


def outputs(step: Any) -> tuple[Any, ...]:
    return (
        step.outputs,
        step.positions,
        step.accepted,
        step.dead_letters,
        step.other,
        step.late,
        step.records,
        [(r.topic, r.partition, r.offset) for r, _ in step.invalid],
    )


def live_engine() -> Engine:
    engine = Engine(config(), Fuser(config()), results=False, check_keys=False)
    for p in (0, 1):  # partition 2 of the records is not ours
        engine.open(p)
    return engine


RECORDS = [
    *events(300, seed=5, partitions=3),
    InRecord("in", 0, 10_000, b"x", b"{broken", None, (("h", b"1"),)),
    InRecord("in", 1, 10_001, b"req-1", pred("req-1", "roberta", 1)),  # late
]


def in_runs(engine: Engine, size: int) -> list[Any]:
    """The live steps over RECORDS, ``size`` at a time, as bare records in runs."""
    steps = []
    for n, start in enumerate(range(0, len(RECORDS), size)):
        runs = runs_of(RECORDS[start : start + size])
        steps.append(engine.step_runs([(tp, [bare(r) for r in run]) for tp, run in runs], n))
    return steps


@pytest.mark.parametrize("size", [1, 7, 50])
def test_bare_records_in_runs_give_what_full_records_give(size: int) -> None:
    """Fused results, dead letters, late records, counts and positions are the same,
    step after step, with duplicates, invalid records and a partition that is not ours
    among them."""
    full = live_engine()
    for n, ours in enumerate(in_runs(live_engine(), size)):
        assert outputs(ours) == outputs(full.step(RECORDS[n * size : (n + 1) * size], n))


def fetched(run: list[InRecord]) -> bytes:
    """A run's records as one fetched v2 record batch (no timestamp: -1)."""
    base = run[0].offset
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    for r in run:
        ts = -1 if r.timestamp is None else r.timestamp
        builder.append(r.offset - base, ts, r.key, r.value, list(r.headers))
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base)  # outside what the CRC covers
    return bytes(data)


@pytest.mark.skipif(native.Fetched is None, reason="the extension is not built")
@pytest.mark.parametrize("check_keys", [False, True])
@pytest.mark.parametrize("size", [1, 7, 50])
def test_fetched_runs_give_what_aiokafkas_records_give(size: int, check_keys: bool) -> None:
    """The compiled parser's runs, read in place by the decoder and the join, give the
    same fused results, dead letters, late records, counts, positions and changed
    requests as aiokafka's parsed records of the same batches, step after step."""
    engines = []
    for _ in range(2):
        engine = Engine(
            config(), Fuser(config()), results=False, check_keys=check_keys, track_touched=True
        )
        for p in (0, 1):
            engine.open(p)
        engines.append(engine)
    theirs, ours = engines
    for n, start in enumerate(range(0, len(RECORDS), size)):
        runs = runs_of(RECORDS[start : start + size])
        data = [(tp, fetched(list(run))) for tp, run in runs]  # type: ignore[arg-type]
        parsed = [(tp, list(MemoryRecords(d).next_batch())) for tp, d in data]
        taken = [(tp, native.Fetched.parse(d, 0, True).take(None)[0]) for tp, d in data]
        assert all(type(run) is native.Run for _, run in taken)
        mine, aiokafkas = ours.step_runs(taken, n), theirs.step_runs(parsed, n)
        assert outputs(mine) == outputs(aiokafkas)
        assert mine.touched == aiokafkas.touched


def test_a_bare_record_gets_its_topic_partition_back() -> None:
    """A dead letter names the topic, partition and offset of its bare record, and a
    step's position per topic partition is past its last record there."""
    ours = {0, 1}
    broken = {(r.topic, r.partition, r.offset) for r in RECORDS if r.value == b"{broken"}
    named = set()
    for n, step in enumerate(in_runs(live_engine(), 50)):
        for records in step.outputs.values():
            for out in records:
                if out.topic == "fusion-dlq":
                    h = {k: v.decode() for k, v in out.headers}
                    named.add(
                        (h["source_topic"], int(h["source_partition"]), int(h["source_offset"]))
                    )
        chunk = RECORDS[n * 50 : (n + 1) * 50]
        assert step.positions == {
            (r.topic, r.partition): r.offset + 1 for r in chunk if r.partition in ours
        }
    assert named == {b for b in broken if b[1] in ours}
    assert len(named) > 10


def test_step_runs_is_the_live_step_only() -> None:
    """On event time the runs would lose the records' order across partitions: refused."""
    engine = Engine(config(), Fuser(config()), event_time=True)
    with pytest.raises(ValueError, match="live"):
        engine.step_runs([], 0)


def test_touched_lists_what_each_step_changed_per_partition() -> None:
    """With ``track_touched`` (exactly-once's changelog), a step lists per partition the
    request of every event it accepted and of every result it fused; a duplicate, a
    late event and a dead letter change nothing. Without it, nothing is listed."""
    records = [
        InRecord("in", 0, 0, b"a", pred("a", "bert-base", 1)),
        InRecord("in", 1, 0, b"b", pred("b", "bert-base", 1)),
        InRecord("in", 0, 1, b"a", pred("a", "roberta", 2)),
        InRecord("in", 0, 2, b"a", pred("a", "roberta", 2)),  # duplicate
        InRecord("in", 1, 1, b"x", b"{broken"),  # dead letter
        InRecord("in", 0, 3, b"a", pred("a", "distil", 3)),  # completes a
        InRecord("in", 0, 4, b"a", pred("a", "distil", 3)),  # late now
    ]
    engine = Engine(config(), Fuser(config()), results=False, track_touched=True)
    for p in (0, 1):
        engine.open(p)
    step = engine.step_runs(runs_of(records), 1_000)
    assert {p: sorted(ids) for p, ids in step.touched.items()} == {
        0: ["a", "a", "a", "a"],  # three accepted events, one fused result
        1: ["b"],
    }
    untracked = Engine(config(), Fuser(config()), results=False)
    for p in (0, 1):
        untracked.open(p)
    assert untracked.step_runs(runs_of(records), 1_000).touched == {}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_live_step_reports_the_spans_of_the_requests_it_closed(compiled: bool) -> None:
    """Per (topic, partition), the offset spans of the requests the step closed, as the
    at-least-once commit needs them (the compiled and the Python table alike); a step
    that closes nothing reports none."""
    engine = live_engine()
    if not compiled:
        for p in (0, 1):
            engine.tables[p] = JoinTable(config().model_names, 1000, 0, 0)
    models = config().model_names
    assert len(models) == 3
    records = [
        InRecord("in", 0, 3, b"r", pred("r", models[0], 1)),
        InRecord("in", 0, 5, b"s", pred("s", models[0], 1)),
        InRecord("in", 0, 7, b"r", pred("r", models[1], 1)),
        InRecord("in", 0, 8, b"s", pred("s", models[1], 1)),
        InRecord("in", 1, 4, b"t", pred("t", models[0], 1)),
    ]
    step = engine.step_runs(runs_of(records), 10)
    assert step.spans == {}
    closing = [
        InRecord("in", 0, 9, b"r", pred("r", models[2], 1)),
        InRecord("in", 0, 12, b"s", pred("s", models[2], 1)),
    ]
    step = engine.step_runs(runs_of(closing), 20)
    assert [f.request_id for f in step.finished] == ["r", "s"]
    assert step.spans == {("in", 0): [(3, 12)]}
