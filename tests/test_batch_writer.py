"""The batch writer (worker/runtime/batches.py) queues a step's records into the
compiled batches a run at a time (``append_many``), and that fills and hands over the
same batches, with the same records, as queueing them one by one; and that a send
keeps its records only until it is acknowledged. No broker (the integration tests send
through it to the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.engine import OutRecord
from worker.runtime.batches import BatchWriter, Sent

PARTITIONS = 4


class Recorded:
    """The compiled batch, noting the keys it took; without ``append_many`` where
    ``bulk`` is false, so that the writer queues into it one record at a time, as into
    aiokafka's."""

    def __init__(self, batch: Any, bulk: bool) -> None:
        self._batch = batch
        self.keys: list[bytes | None] = []
        if bulk:
            self.append_many = self._append_many

    def append(self, **kwargs: Any) -> Any:
        took = self._batch.append(**kwargs)
        if took:
            self.keys.append(kwargs["key"])
        return took

    def _append_many(
        self,
        keys: list[bytes | None],
        values: Any,
        start: int,
        timestamp: int | None = None,
        headers: Any = None,
        rows: list[int] | None = None,
    ) -> int:
        stop: int = self._batch.append_many(keys, values, start, timestamp, headers, rows)
        order = range(len(keys)) if rows is None else rows
        self.keys += [keys[i] for i in order[start:stop]]
        return stop

    def close(self) -> None:
        self._batch.close()


class Producer:
    """What the writer asks of a producer: batches of ``size`` bytes; per topic
    partition, the keys of each batch handed over, in order (acknowledged when told)."""

    def __init__(self, size: int, bulk: bool) -> None:
        assert native.RecordBatch is not None, "build native/ (make .venv)"
        self._make = native.RecordBatch
        self.size = size
        self.bulk = bulk
        self.handed: dict[tuple[str, int], list[list[bytes | None]]] = {}
        self.futures: list[asyncio.Future[Any]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))

    def create_batch(self) -> Recorded:
        return Recorded(self._make(self.size, False), self.bulk)

    async def send_batch(self, builder: Recorded, topic: str, partition: int) -> Any:
        self.handed.setdefault((topic, partition), []).append(builder.keys)
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def acknowledge(self) -> None:
        for future in self.futures:
            future.set_result(None)


async def _write(steps: list[list[OutRecord]], size: int, bulk: bool) -> Any:
    """Per topic partition, the keys of each batch handed over; and per topic, the keys
    of the records the writer reports sent."""
    producer = Producer(size, bulk)
    writer = BatchWriter(producer)  # type: ignore[arg-type]
    sent = []
    for records in steps:
        sent += await writer.write(records)
        sent += await writer.submit()
    sent += await writer.submit(force=True)
    reported: dict[str, list[bytes | None]] = {}
    for s in sent:  # before they are acknowledged: then they keep only the count
        reported.setdefault(s.topic, []).extend(r.key for r in s.records)
    producer.acknowledge()
    return producer.handed, {t: sorted(keys) for t, keys in reported.items()}


def out_records(topics: list[str]) -> st.SearchStrategy[OutRecord]:
    """Keyed records to ``topics``, some with a ``traceparent`` header."""
    return st.builds(
        OutRecord,
        st.sampled_from(topics),
        st.binary(min_size=1, max_size=12),
        st.binary(max_size=700),
        st.one_of(
            st.none(), st.just([("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")])
        ),
    )


record = out_records(["out", "dlq"])


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.lists(record, max_size=30), max_size=5), size=st.sampled_from([300, 4_000])
)
def test_runs_fill_the_batches_one_by_one_fills(steps: list[list[OutRecord]], size: int) -> None:
    """Whether the writer queues a partition's records a run at a time or one by one,
    it hands over the same batches of each partition, in the same order, with the same
    records, and reports the same records sent (partitions may take turns otherwise)."""
    bulk = asyncio.run(_write(steps, size, bulk=True))
    single = asyncio.run(_write(steps, size, bulk=False))
    assert bulk == single


one_topic = out_records(["out"])


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(st.lists(one_topic, min_size=1, max_size=40), max_size=4),
    size=st.sampled_from([300, 4_000]),
)
def test_a_steps_results_queued_a_list_at_a_time_are_queued_as_one_by_one(
    steps: list[list[OutRecord]], size: int
) -> None:
    """A step's results (one topic, keyed, none big: ``write``'s list-at-a-time path)
    make the same batches, in the same order, as one-by-one queueing."""
    bulk = asyncio.run(_write(steps, size, bulk=True))
    single = asyncio.run(_write(steps, size, bulk=False))
    assert bulk == single


async def _settled_send(outcome: str) -> Sent:
    """A send of three records whose acknowledgement came back as ``outcome``."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    sent = Sent("out", [OutRecord("out", b"k%d" % i, b"v") for i in range(3)], future)
    if outcome == "acknowledged":
        future.set_result(None)
    elif outcome == "failed":
        future.set_exception(OSError("refused"))
        future.exception()
    else:
        future.cancel()
    await asyncio.sleep(0)  # the future's callbacks run
    return sent


def test_an_acknowledged_send_keeps_its_count_not_its_records() -> None:
    """Once acknowledged, a send drops its records (nothing sends them again) and keeps
    how many there were, so that they are freed as acknowledgements come in, not all
    at the next commit."""
    sent = asyncio.run(_settled_send("acknowledged"))
    assert sent.records == []
    assert sent.count == 3


def test_a_failed_or_cancelled_send_keeps_its_records_for_the_resend() -> None:
    """A send that failed or was cancelled keeps its records: the sink sends them
    again, or the refusal names and shrinks them."""
    for outcome in ("failed", "cancelled"):
        sent = asyncio.run(_settled_send(outcome))
        assert [r.key for r in sent.records] == [b"k0", b"k1", b"k2"], outcome
        assert sent.count == 3
