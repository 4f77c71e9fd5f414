"""The compiled record batch (``native/src/batch.rs``) writes the bytes aiokafka's own
builder writes, fills up when aiokafka's does, and is used only where it may stand in
for aiokafka's (worker/runtime/record_batch.py). The integration tests send through it
to the real broker, in both delivery modes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.runtime.record_batch import batch_factory

Header = tuple[str, bytes | None]
Record = tuple[int, bytes | None, bytes | None, list[Header] | None]

records = st.lists(
    st.tuples(
        # Timestamps around now, and small ones (varint deltas of every length).
        st.one_of(st.integers(0, 10), st.integers(1_700_000_000_000, 1_800_000_000_000)),
        st.one_of(st.none(), st.binary(max_size=40)),
        st.one_of(st.none(), st.binary(max_size=300), st.binary(min_size=2_000, max_size=3_000)),
        st.one_of(
            st.none(),
            st.lists(
                st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=20))),
                max_size=3,
            ),
        ),
    ),
    max_size=40,
)


def _compiled() -> Any:
    assert native.RecordBatch is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    return native.RecordBatch


def _fill(batch: Any, recs: list[Record]) -> list[bool]:
    """Append each record; whether each went in."""
    return [
        batch.append(timestamp=ts, key=k, value=v, headers=h) is not None for ts, k, v, h in recs
    ]


@settings(max_examples=300)
@given(
    recs=records,
    batch_size=st.sampled_from([64, 1_000, 16_384]),
    transactional=st.booleans(),
    producer=st.tuples(
        st.integers(-1, 2**40), st.integers(-1, 2**15 - 1), st.integers(0, 2**31 - 1)
    ),
)
def test_the_bytes_and_the_full_batch_are_aiokafkas(
    recs: list[Record], batch_size: int, transactional: bool, producer: tuple[int, int, int]
) -> None:
    """Record for record, the compiled batch takes what aiokafka's takes, has its size
    and count, and builds the same bytes with the same producer state."""
    theirs = BatchBuilder(batch_size, 0, is_transactional=transactional)
    ours = _compiled()(batch_size, transactional)
    assert _fill(ours, recs) == _fill(theirs, recs)
    assert (ours.size(), ours.record_count(), ours.closed()) == (
        theirs.size(),
        theirs.record_count(),
        theirs.closed(),
    )
    theirs._set_producer_state(*producer)
    ours._set_producer_state(*producer)
    assert ours._build() == bytes(theirs._build())


def test_a_built_batch_is_closed_and_built_once() -> None:
    """Building closes the batch; a second build gives the same object, and the
    producer state can no longer change."""
    batch = _compiled()(16_384, False)
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=None)
    built = batch._build()
    assert batch.closed()
    assert batch._build() is built
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=None) is None
    with pytest.raises(RuntimeError, match="already built"):
        batch._set_producer_state(1, 0, 0)


def test_a_record_without_a_timestamp_gets_the_time_now() -> None:
    """A record appended without a timestamp carries the wall clock in ms, as aiokafka's."""
    before = int(time.time() * 1000)
    batch = _compiled()(16_384, False)
    batch.append(timestamp=None, key=None, value=b"v", headers=None)
    first_ts = int.from_bytes(batch._build()[27:35], "big")
    assert before <= first_ts <= int(time.time() * 1000)


@pytest.mark.parametrize(
    ("options", "compiled"),
    [
        pytest.param({}, True, id="plain"),
        pytest.param({"transactional_id": "t"}, True, id="transactional"),
        pytest.param({"compression_type": "gzip"}, False, id="compressed"),
        pytest.param({"value_serializer": bytes}, False, id="serialising"),
    ],
)
async def test_the_compiled_batch_stands_in_only_where_it_writes_the_same(
    options: dict[str, Any], compiled: bool
) -> None:
    """A producer that compresses or serialises gets aiokafka's batches; any other the
    compiled one, with the producer's batch size and transactional flag."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=500, **options)
    try:
        make = batch_factory(producer)
        batch, theirs = make(), producer.create_batch()
    finally:
        await producer.stop()  # never started: nothing to flush
    assert (type(batch) is not BatchBuilder) is compiled
    if compiled:
        recs: list[Record] = [(5, b"k", bytes(100), None)] * 8
        assert _fill(batch, recs) == _fill(theirs, recs)  # full at the same record
        assert batch._build() == bytes(theirs._build())


def test_a_producer_of_another_kind_makes_its_own_batches() -> None:
    """Anything but aiokafka's producer (a test's fake) is asked for its own batches."""

    class Fake:
        def create_batch(self) -> str:
            return "its own"

    assert batch_factory(Fake())() == "its own"


@settings(max_examples=300)
@given(
    recs=records,
    batch_size=st.sampled_from([64, 1_000, 16_384]),
    start=st.integers(0, 45),
    listed=st.booleans(),
)
def test_a_run_appended_at_once_is_the_records_appended_one_by_one(
    recs: list[Record], batch_size: int, start: int, listed: bool
) -> None:
    """``append_many`` from ``start`` takes the records that ``append`` takes one by one
    with the same timestamp, stops at the first that does not fit (the batch closes),
    and writes the same bytes; without a header list every record has none."""
    ts = 1_764_000_000_000
    headers = [h for _, _, _, h in recs] if listed else None
    one_by_one = _compiled()(batch_size, False)
    went = 0
    for _, key, value, h in recs[start:]:
        if one_by_one.append(timestamp=ts, key=key, value=value, headers=h if listed else None):
            went += 1
        else:
            break
    at_once = _compiled()(batch_size, False)
    keys = [k for _, k, _, _ in recs]
    values = [v for _, _, v, _ in recs]
    stop = at_once.append_many(keys, values, start, ts, headers)
    assert stop == min(start, len(recs)) + went
    assert (at_once.record_count(), at_once.closed()) == (went, one_by_one.closed())
    assert at_once._build() == one_by_one._build()


@given(
    recs=records,
    batch_size=st.sampled_from([64, 1_000, 16_384]),
    picks=st.lists(st.integers(0, 1_000), max_size=30),
    start=st.integers(0, 10),
)
def test_a_run_of_rows_is_those_records_appended_in_turn(
    recs: list[Record], batch_size: int, picks: list[int], start: int
) -> None:
    """``append_many`` with ``rows`` takes the records at those positions, from the
    ``start``-th row on, as a run of just them would, and returns a position in
    ``rows``."""
    if not recs:
        return
    rows = [i % len(recs) for i in picks]
    ts = 1_764_000_000_000
    keys = [k for _, k, _, _ in recs]
    values = [v for _, _, v, _ in recs]
    headers = [h for _, _, _, h in recs]
    by_rows = _compiled()(batch_size, False)
    stop = by_rows.append_many(keys, values, start, ts, headers, rows)
    picked = _compiled()(batch_size, False)
    alone = picked.append_many(
        [keys[i] for i in rows], [values[i] for i in rows], start, ts, [headers[i] for i in rows]
    )
    assert stop == alone
    assert by_rows._build() == picked._build()


def test_rows_beyond_the_lists_are_refused() -> None:
    """A row that is not a position in the lists is an error, not a read past them."""
    with pytest.raises(ValueError, match="beyond"):
        _compiled()(16_384, False).append_many([b"k"], [b"v"], 0, None, None, [0, 1])


def test_a_closed_batch_takes_no_run_and_lists_must_match() -> None:
    """A closed batch appends nothing (the run stops where it starts); keys, values and
    headers of different lengths are refused."""
    batch = _compiled()(16_384, False)
    batch.close()
    assert batch.append_many([b"k", b"l"], [b"v", b"w"], 1) == 1
    with pytest.raises(ValueError, match="same length"):
        _compiled()(16_384, False).append_many([b"k"], [b"v", b"w"])
    with pytest.raises(ValueError, match="same length"):
        _compiled()(16_384, False).append_many([b"k"], [b"v"], 0, None, [None, None])
