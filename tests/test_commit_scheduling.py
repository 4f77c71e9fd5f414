"""The at-least-once commit off the loop (worker/runtime/at_least_once.py, inflight.py):
the periodic commit captures on the loop and finishes in the background, one at a time;
a waiting commit settles it first; failures are handed back to the loop.

The sends and the consumer's commit are stand-ins here: what is tested is the
scheduling, not Kafka (tests/integration/test_at_least_once_chaos.py runs it on the real
broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import RequestTimedOutError, TopicAuthorizationFailedError
from aiokafka.structs import RecordMetadata
from prometheus_client import CollectorRegistry

from worker.config import build_config
from worker.engine import Engine, OutRecord
from worker.fusion import Fuser
from worker.metrics import Metrics
from worker.runtime.at_least_once import AtLeastOnce
from worker.runtime.batches import Sent
from worker.runtime.delivery import Context
from worker.runtime.feedback import FeedbackLink
from worker.runtime.inflight import InFlight
from worker.runtime.partitions import Partitions
from worker.runtime.sink import Sink, acked_ends

TP = TopicPartition("predictions", 0)
OUT = "fused"


class FakeConsumer:
    """The consumer's ``commit``: records each call; ``gate`` holds it, ``error`` fails it."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


class FakeBuilder:
    def append(self, **_: Any) -> bool:
        return True

    def close(self) -> None:
        pass


class FakeProducer:
    """What the sink's batch writer asks of a producer; each batch's acknowledgement is
    a future the test resolves (``acks``)."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future[Any]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder()

    async def send_batch(self, builder: FakeBuilder, topic: str, partition: int) -> Any:
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


class Harness:
    """An ``AtLeastOnce`` with a real ``Sink`` whose sends the test resolves by hand."""

    def __init__(self) -> None:
        config = build_config(
            {"fusion": {"labels": ["x", "y"]}, "models": [{"name": "a"}, {"name": "b"}]}
        )
        self.registry = CollectorRegistry()
        metrics = Metrics(
            self.registry, models=config.model_names, strategy="soft_vote", output_topics=[OUT]
        )
        fuser = Fuser(config)
        state = Partitions(Engine(config, fuser), metrics)
        self.consumer = FakeConsumer()
        state.consumer = self.consumer  # type: ignore[assignment]

        async def connect(step: Any) -> None:
            await step()

        context = Context(
            config, metrics, state, lambda: None, connect, FeedbackLink(config, fuser), lambda: 0.0
        )
        self.delivery = AtLeastOnce(context)
        self.producer = FakeProducer()
        self.sink = Sink(self.producer, retry_backoff_ms=10)  # type: ignore[arg-type]
        self.delivery._sink = self.sink
        self.state = state

    def send(self) -> asyncio.Future[Any]:
        """One output handed to the producer; its acknowledgement is the returned future."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sink._in_flight.append(Sent(OUT, [OutRecord(OUT, b"k", b"v")], future))
        return future

    def commits(self, outcome: str) -> float:
        value = self.registry.get_sample_value("fusion_commits_total", {"outcome": outcome})
        return value or 0.0


def ack(future: asyncio.Future[Any], offset: int = 0) -> None:
    future.set_result(RecordMetadata(OUT, 0, TopicPartition(OUT, 0), offset, -1, 0, 0))


async def test_a_periodic_commit_returns_before_the_outputs_are_acknowledged() -> None:
    """``commit(wait=False)`` does not wait for acknowledgements; the offsets are
    committed once they arrive."""
    h = Harness()
    h.state.positions[TP] = 10
    sent = h.send()
    await h.delivery.commit(wait=False)
    assert h.consumer.commits == []
    ack(sent)
    await h.delivery._inflight.wait()
    assert h.consumer.commits == [{TP: 10}]
    assert h.state.committed[TP] == 10


async def test_the_commit_waits_only_for_the_outputs_queued_before_it() -> None:
    """An output queued after the capture, never acknowledged, does not hold the commit
    up: it belongs to the next one."""
    h = Harness()
    h.state.positions[TP] = 10
    first = h.send()
    await h.delivery.commit(wait=False)
    h.send()  # queued after the capture
    h.state.positions[TP] = 20
    ack(first)
    await h.delivery._inflight.wait()
    assert h.consumer.commits == [{TP: 10}]
    assert len(h.sink._in_flight) == 1


async def test_a_batch_still_open_at_the_capture_is_waited_for_once_handed_over() -> None:
    """An output still in an open batch at the capture (its partition's previous batch
    not yet acknowledged) is not forced out: the commit waits until the loop's next
    ``submit`` hands it over, then for its acknowledgement."""
    h = Harness()
    h.state.positions[TP] = 10
    await h.sink.write([OutRecord(OUT, b"k", b"v")])
    await h.delivery.commit(wait=False)
    assert h.producer.acks == []
    await h.sink.submit()
    assert len(h.producer.acks) == 1
    await asyncio.sleep(0.01)
    assert h.consumer.commits == []
    ack(h.producer.acks[0])
    await h.delivery._inflight.wait()
    assert h.consumer.commits == [{TP: 10}]


async def test_a_waiting_commit_hands_over_open_batches_before_it_waits() -> None:
    """``commit()`` while the commit in flight waits for an open batch hands that batch
    over first (else the two would wait for each other for ever)."""
    h = Harness()
    h.state.positions[TP] = 10
    await h.sink.write([OutRecord(OUT, b"k", b"v")])
    await h.delivery.commit(wait=False)
    waiting = asyncio.ensure_future(h.delivery.commit())
    await asyncio.sleep(0.01)
    assert len(h.producer.acks) == 1
    ack(h.producer.acks[0])
    async with asyncio.timeout(5):
        await waiting
    assert h.consumer.commits == [{TP: 10}]


async def test_an_interval_while_a_commit_is_in_flight_is_skipped() -> None:
    """A second periodic commit while the first waits captures nothing and commits
    nothing; the first commits what it captured."""
    h = Harness()
    h.state.positions[TP] = 10
    sent = h.send()
    await h.delivery.commit(wait=False)
    h.state.positions[TP] = 20
    await h.delivery.commit(wait=False)
    ack(sent)
    await h.delivery._inflight.wait()
    assert h.consumer.commits == [{TP: 10}]


async def test_a_waiting_commit_settles_the_one_in_flight_first() -> None:
    """``commit()`` (revocation, shutdown) lets the commit in flight finish, then
    commits the current positions itself, in that order."""
    h = Harness()
    h.state.positions[TP] = 10
    sent = h.send()
    await h.delivery.commit(wait=False)
    h.state.positions[TP] = 20
    waiting = asyncio.ensure_future(h.delivery.commit())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    ack(sent)
    await waiting
    assert h.consumer.commits == [{TP: 10}, {TP: 20}]


async def test_a_failed_send_goes_back_to_the_sink_and_the_next_commit_is_the_loops() -> None:
    """A send that failed is not committed over: it is back in the sink, and the next
    periodic commit flushes on the loop (which re-sends it) before committing."""
    h = Harness()
    h.state.positions[TP] = 10
    sent = h.send()
    await h.delivery.commit(wait=False)
    sent.set_exception(RequestTimedOutError())
    await h.delivery._inflight.wait()
    assert h.consumer.commits == []
    assert [s.future for s in h.sink._in_flight] == [sent]
    flushed: list[bool] = []

    async def flush(topic: str = "") -> dict[int, int]:
        flushed.append(True)
        h.sink._in_flight.clear()
        return {}

    h.sink.flush = flush  # type: ignore[method-assign]
    await h.delivery.commit(wait=False)
    assert flushed == [True]
    assert h.consumer.commits == [{TP: 10}]


async def test_a_failed_background_commit_is_counted_and_the_loop_goes_on() -> None:
    """A commit the broker refuses for a passing reason is counted as failed; the loop's
    next ``maintain`` does not raise and the next interval commits again."""
    h = Harness()
    h.state.positions[TP] = 10
    h.consumer.error = RequestTimedOutError()
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    await h.delivery.maintain()
    assert h.commits("failed") == 1
    h.consumer.error = None
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    assert h.consumer.commits == [{TP: 10}]
    assert h.commits("ok") == 1


async def test_a_fatal_background_commit_error_stops_the_loop_at_its_next_fetch() -> None:
    """A fatal error of the commit in the background is raised by ``maintain`` (before
    the next fetch), and again after that: it is not forgotten."""
    h = Harness()
    h.state.positions[TP] = 10
    h.consumer.error = TopicAuthorizationFailedError()
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    for _ in range(2):
        with pytest.raises(TopicAuthorizationFailedError):
            await h.delivery.maintain()


async def test_stop_ends_a_commit_still_in_flight_without_committing() -> None:
    """At a shutdown cut short, the commit in flight is cancelled, not left running."""
    h = Harness()
    h.state.positions[TP] = 10
    h.send()
    await h.delivery.commit(wait=False)
    assert h.delivery._inflight.busy
    await h.delivery.stop()
    assert not h.delivery._inflight.busy
    assert h.consumer.commits == []


async def test_in_flight_refuses_a_second_job() -> None:
    """One job at a time: starting another while one runs is a programming error."""
    inflight = InFlight()
    gate = asyncio.Event()
    inflight.start(gate.wait())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        inflight.start(asyncio.sleep(0))
    gate.set()
    await inflight.wait()
    inflight.check()
    assert not inflight.busy


async def test_cancelling_a_wait_cancels_the_job() -> None:
    """A caller that gives up waiting (a shutdown past its budget) ends the job: no
    commit lands after the worker gave up on it."""
    inflight = InFlight()
    done: list[bool] = []

    async def job() -> None:
        await asyncio.sleep(10)
        done.append(True)

    inflight.start(job())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await inflight.wait()
    await asyncio.sleep(0)
    assert not inflight.busy
    assert done == []


def test_acked_ends_are_the_last_acknowledged_offset_plus_the_batch_size() -> None:
    """Per output partition, the end is the largest base offset + record count among
    acknowledged sends (which keep the count, not the records); failed sends and other
    topics do not count."""
    loop = asyncio.new_event_loop()
    try:

        def sent(topic: str, partition: int, offset: int, n: int, ok: bool = True) -> Sent:
            future: asyncio.Future[Any] = loop.create_future()
            if ok:
                tp = TopicPartition(topic, partition)
                future.set_result(RecordMetadata(topic, partition, tp, offset, -1, 0, 0))
            else:
                future.set_exception(RequestTimedOutError())
                future.exception()
            return Sent(topic, [OutRecord(topic, b"k", b"v")] * n, future)

        sends = [
            sent(OUT, 0, 100, 5),
            sent(OUT, 0, 40, 10),
            sent(OUT, 1, 7, 1),
            sent(OUT, 2, 500, 3, ok=False),
            sent("dlq", 3, 900, 2),
        ]
        # As in the worker, the acknowledged sends have dropped their records by now.
        loop.run_until_complete(asyncio.sleep(0))
        ends = acked_ends(sends, OUT)
    finally:
        loop.close()
    assert ends == {0: 105, 1: 8}
