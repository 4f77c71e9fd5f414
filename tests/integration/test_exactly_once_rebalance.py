"""Exactly-once: rebalance callbacks never change partition state while the loop emits
or commits, and a partition this worker lost is never opened again by it (that would
init its transactional id and fence the new owner). The interleavings are forced by
holding the loop's lock, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from tests.integration.conftest import Pipeline
from worker.config import load_config
from worker.engine import OutRecord
from worker.runtime.exactly_once import ExactlyOnce
from worker.runtime.loop import Loop
from worker.runtime.main import make_worker

pytestmark = pytest.mark.kafka


async def opened(worker: Loop, count: int, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while len(worker.tables) < count:
        assert time.monotonic() < end, "partitions not opened in time"
        await asyncio.sleep(0.05)


async def running(p: Pipeline) -> tuple[Loop, asyncio.Task[None]]:
    worker = make_worker(load_config(p.config(kafka={"delivery": "exactly-once"}), env={}))
    await worker.start()
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.assigned.wait(), 30)
    await opened(worker, 2)
    return worker, task


async def stopped(worker: Loop, task: asyncio.Task[None]) -> None:
    worker.request_stop()
    await task
    await worker.stop()


async def test_a_revocation_between_emit_and_commit_waits_for_the_commit(
    pipeline: Callable[..., Any],
) -> None:
    """A new assignment arriving while the loop is between emit and commit closes
    nothing until the commit is done: the commit raises no KeyError and commits."""
    p: Pipeline = await pipeline(partitions=2)
    worker, task = await running(p)
    delivery = worker.delivery
    assert isinstance(delivery, ExactlyOnce)
    try:
        keep = [TopicPartition(t, 0) for t in p.inputs]
        async with worker.lock:  # the loop, mid-batch
            await delivery.write(1, [OutRecord(p.output, b"r-1", b"{}")])
            callback = asyncio.create_task(worker.on_assigned(keep))
            await asyncio.sleep(0.2)
            assert not callback.done()
            assert set(worker.tables) == {0, 1}, "the callback changed state under the loop"
            await delivery.commit()
        await asyncio.wait_for(callback, 10)
        assert set(worker.tables) == {0}
        assert worker.metrics.transactions.labels("committed")._value.get() >= 1
    finally:
        await stopped(worker, task)


async def test_a_lost_partition_whose_transaction_fails_is_not_opened_again(
    pipeline: Callable[..., Any],
) -> None:
    """A transaction failure reported after the partition was revoked neither re-opens
    nor parks it: this worker no longer owns it."""
    p: Pipeline = await pipeline(partitions=2)
    worker, task = await running(p)
    delivery = worker.delivery
    assert isinstance(delivery, ExactlyOnce)
    try:
        keep = [TopicPartition(t, 0) for t in p.inputs]
        async with worker.lock:
            await delivery.write(1, [OutRecord(p.output, b"r-1", b"{}")])
        await worker.on_assigned(keep)
        async with worker.lock:
            await delivery.failed(1, KafkaError("a late failure of the lost partition"))
        assert 1 not in delivery.opening
        assert 1 not in delivery.parked
        assert 1 not in worker.tables
    finally:
        await stopped(worker, task)
