"""The exactly-once commit off the loop (worker/runtime/exactly_once.py): the periodic
commit captures each partition's offsets, changelog delta and outputs on the loop and
commits them in the background; outputs of later steps wait in the partition's backlog
for the next transaction; a waiting commit settles the one in flight first; failures are
handed back to the loop.

The transactional producer is a stand-in here: what is tested is the scheduling, not
Kafka (tests/integration/test_exactly_once.py kills and rebalances workers on the real
broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import RequestTimedOutError, TransactionalIdAuthorizationFailed
from aiokafka.structs import RecordMetadata
from prometheus_client import CollectorRegistry

from worker.config import build_config
from worker.engine import Engine, OutRecord
from worker.fusion import Fuser
from worker.metrics import Metrics
from worker.runtime.delivery import Context
from worker.runtime.exactly_once import ExactlyOnce
from worker.runtime.feedback import FeedbackLink
from worker.runtime.partitions import Partitions
from worker.runtime.too_large import SizeLimits
from worker.runtime.transactions import TxnPartition

TP = TopicPartition("predictions", 0)
OUT = "fused"


class FakeBuilder:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, value: bytes, **_: Any) -> bool:
        self.values.append(value)
        return True

    def close(self) -> None:
        pass


class FakeTxnProducer:
    """A transactional producer: each transaction's record values and offsets are kept
    when it commits; ``gate`` holds the commit, ``error`` fails it."""

    def __init__(self) -> None:
        self.open: list[bytes] = []
        self.offsets: dict[TopicPartition, int] = {}
        self.committed: list[tuple[list[bytes], dict[TopicPartition, int]]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None
        self.begun = 0

    async def begin_transaction(self) -> None:
        self.begun += 1

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> FakeBuilder:
        return FakeBuilder()

    async def send_batch(self, builder: FakeBuilder, topic: str, partition: int) -> Any:
        if topic == OUT:
            self.open += builder.values
        future = asyncio.get_running_loop().create_future()
        future.set_result(
            RecordMetadata(topic, partition, TopicPartition(topic, partition), 0, -1, 0, 0)
        )
        return future

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group: str
    ) -> None:
        self.offsets = dict(offsets)

    async def commit_transaction(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.committed.append((self.open, self.offsets))
        self.open, self.offsets = [], {}

    async def stop(self) -> None:
        pass


class Harness:
    """An ``ExactlyOnce`` with partition 0 open on a stand-in producer."""

    def __init__(self) -> None:
        config = build_config(
            {
                "kafka": {"delivery": "exactly-once", "output_topic": OUT},
                "fusion": {"labels": ["x", "y"]},
                "models": [{"name": "a"}, {"name": "b"}],
            }
        )
        registry = CollectorRegistry()
        metrics = Metrics(
            registry, models=config.model_names, strategy="soft_vote", output_topics=[OUT]
        )
        fuser = Fuser(config)
        self.state = Partitions(Engine(config, fuser), metrics)
        self.state.owned = {0}

        async def connect(step: Any) -> None:
            await step()

        context = Context(
            config,
            metrics,
            self.state,
            lambda: None,
            connect,
            FeedbackLink(config, fuser),
            lambda: 0.0,
        )
        self.delivery = ExactlyOnce(context)
        self.producer = FakeTxnProducer()
        self.state.open(0)
        self.delivery.parts[0] = TxnPartition(self.producer, SizeLimits())

    async def output(self, value: bytes, position: int) -> None:
        """One step's output for partition 0, its input consumed up to ``position``."""
        self.state.positions[TP] = position
        await self.delivery.write(0, [OutRecord(OUT, b"k", value)])


async def test_a_periodic_commit_returns_before_its_transaction_commits() -> None:
    """``commit(wait=False)`` returns while the transaction's commit is still held; it
    lands in the background with the outputs and offsets captured."""
    h = Harness()
    h.producer.gate = asyncio.Event()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    assert h.producer.committed == []
    h.producer.gate.set()
    await h.delivery._inflight.wait()
    assert h.producer.committed == [([b"r1"], {TP: 10})]
    assert h.state.committed == {TP: 10}


async def test_outputs_during_a_commit_go_into_the_next_transaction() -> None:
    """An output of a step after the capture waits in the backlog and is committed with
    the next transaction and that transaction's offsets, never with the one in flight."""
    h = Harness()
    h.producer.gate = asyncio.Event()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await asyncio.sleep(0.01)  # the commit has written r1 and waits at its gate
    await h.output(b"r2", 20)
    assert h.producer.open == [b"r1"]
    h.producer.gate.set()
    await h.delivery._inflight.wait()
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    assert h.producer.committed == [([b"r1"], {TP: 10}), ([b"r2"], {TP: 20})]


async def test_an_interval_while_a_commit_is_in_flight_is_skipped() -> None:
    """A second periodic commit while the first is still committing starts nothing."""
    h = Harness()
    h.producer.gate = asyncio.Event()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await h.output(b"r2", 20)
    await h.delivery.commit(wait=False)
    h.producer.gate.set()
    await h.delivery._inflight.wait()
    assert h.producer.committed == [([b"r1"], {TP: 10})]
    assert h.delivery.parts[0].backlog == [OutRecord(OUT, b"k", b"r2")]


async def test_a_waiting_commit_settles_the_one_in_flight_first() -> None:
    """A revocation's commit (``wait=True``) waits for the commit in flight, then commits
    the backlog with the offsets up to now."""
    h = Harness()
    h.producer.gate = asyncio.Event()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await h.output(b"r2", 20)
    waiting = asyncio.ensure_future(h.delivery.commit([TP]))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    h.producer.gate.set()
    await waiting
    assert h.producer.committed == [([b"r1"], {TP: 10}), ([b"r2"], {TP: 20})]


async def test_a_failed_background_commit_rewinds_the_partition_on_the_loop() -> None:
    """A transaction whose commit failed in the background is rewound at the loop's next
    ``maintain``: the partition is closed, its backlog dropped, and it is opened again."""
    h = Harness()
    h.producer.error = RequestTimedOutError()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    await h.output(b"r2", 20)
    assert 0 in h.delivery.parts  # nothing changes until the loop looks
    h.delivery._open_at = float("inf")  # not opened again within this test
    await h.delivery.maintain()
    assert 0 not in h.delivery.parts
    assert 0 in h.delivery.opening
    assert h.producer.committed == []
    assert TP not in h.state.committed


async def test_a_fatal_background_commit_error_stops_the_loop_at_its_next_maintain() -> None:
    """An authorization failure in the background is raised on the loop."""
    h = Harness()
    h.producer.error = TransactionalIdAuthorizationFailed()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await h.delivery.maintain()


async def test_stop_ends_a_commit_in_flight_without_committing() -> None:
    """The shutdown cut short: the commit in flight is cancelled, nothing committed."""
    h = Harness()
    h.producer.gate = asyncio.Event()
    await h.output(b"r1", 10)
    await h.delivery.commit(wait=False)
    await h.delivery.stop()
    assert h.producer.committed == []
    assert h.state.committed == {}


async def test_a_fatal_error_ends_the_other_partitions_commits_with_the_job() -> None:
    """Partition 0's commit fails fatally while partition 1's is still committing: the
    job ends both, so partition 1 commits nothing once the job is over, and the loop
    gets the error itself (not wrapped in a group)."""
    h = Harness()
    other = FakeTxnProducer()
    other.gate = asyncio.Event()
    h.state.owned = {0, 1}
    h.state.open(1)
    h.delivery.parts[1] = TxnPartition(other, SizeLimits())
    h.producer.error = TransactionalIdAuthorizationFailed()
    await h.output(b"r0", 10)
    h.state.positions[TopicPartition("predictions", 1)] = 5
    await h.delivery.write(1, [OutRecord(OUT, b"k", b"r1")])
    await h.delivery.commit(wait=False)
    await h.delivery._inflight.wait()
    other.gate.set()
    await asyncio.sleep(0.01)
    assert other.committed == []
    with pytest.raises(TransactionalIdAuthorizationFailed):
        await h.delivery.maintain()
