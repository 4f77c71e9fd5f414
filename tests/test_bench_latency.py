"""The latency benchmark's load generator (bench/latency.py): its schedule, the event
bytes it writes and the timestamps it reports are what the benchmark claims; no
broker."""

from __future__ import annotations

import numpy as np
import orjson
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import kit, latency


@given(rate=st.floats(50.0, 5_000.0), seconds=st.floats(0.01, 0.5), seed=st.integers(0, 99))
@settings(max_examples=60, deadline=None)
def test_schedule_has_each_event_once_in_due_order(rate: float, seconds: float, seed: int) -> None:
    """Every model's event of every request comes once, in the order it is due, at its
    request's start plus a delay within that model's range."""
    due, order = latency.schedule(rate, seconds, np.random.default_rng(seed))
    per_request = len(latency.DELAYS_MS)
    n = len(order) // per_request
    assert n == int(np.ceil(rate * seconds))
    assert sorted(order) == list(range(n * per_request))
    assert due == sorted(due)
    for at, event in zip(due, order, strict=True):
        request, model = divmod(event, per_request)
        lo, hi = latency.DELAYS_MS[model]
        delay_ms = (at - request / rate) * 1000
        assert lo - 1e-6 <= delay_ms <= hi + 1e-6


def test_stamps_are_each_requests_first_and_last_event() -> None:
    """A request's (first, last) are the least and greatest timestamps of its events,
    whatever their places in the schedule."""
    rids = ["a", "b"]
    # events by place: b's model 2, a's model 0, b's 0, a's 2, a's 1, b's 1
    order = [5, 0, 3, 2, 1, 4]
    sent = [10, 11, 12, 13, 14, 15]
    assert latency.stamps(rids, order, sent) == {"a": (11, 14), "b": (10, 15)}


@given(
    i=st.integers(0, 10**9 - 1),
    model=st.sampled_from(kit.MODELS),
    ts=st.integers(0, 2**50),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_event_bytes_are_kit_event_value(i: int, model: str, ts: int, seed: int) -> None:
    """The generator's formatted event is byte for byte the one ``kit.event_value``
    writes, so the worker reads the same events as in the other benchmarks."""
    probs = kit.random_probs(np.random.default_rng(seed), 1)[0]
    rid = kit.request_id("lat-0a1b2c", i)
    got = latency.event_bytes(rid.encode(), model.encode(), ts, orjson.dumps(probs))
    assert got == kit.event_value(rid, model, ts, probs)


class _Batches:
    """What ``BatchWriter`` asks of a producer to open a batch: aiokafka's builder."""

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1024, 0)


def test_append_adds_only_to_an_open_batch_with_room() -> None:
    """``BatchWriter.append`` adds and counts a record where the partition's batch is
    open and has room, and otherwise adds nothing (``add_to`` opens or sends)."""
    batches = _Batches()
    writer = kit.BatchWriter(batches, "t", 2)  # type: ignore[arg-type]
    assert not writer.append(0, b"k", b"v" * 100, 1)  # no batch open yet
    writer._builders[0] = batches.create_batch()
    assert writer.append(0, b"k", b"v" * 100, 1)
    assert not writer.append(0, b"k", b"v" * 2000, 1)  # over the batch size
    assert not writer.append(1, b"k", b"v", 1)  # another partition: none open
    assert writer.count == 1
    assert writer._builders[0].record_count() == 1
