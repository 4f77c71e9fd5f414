"""worker/runtime/transactions.py: how the sends of an open transaction are judged
before its commit (no broker needed: the futures are set by hand)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, ProducerFenced

from worker.engine import OutRecord
from worker.runtime.batches import Sent
from worker.runtime.too_large import SizeLimits
from worker.runtime.transactions import SendRefused, acknowledged


def sent(topic: str, outcome: BaseException | None) -> Sent:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
    return Sent(topic, [OutRecord(topic, b"k", b"v")], future)


async def judge(*sends: Sent) -> tuple[Any, SizeLimits]:
    part = SimpleNamespace(sent=list(sends))
    limits = SizeLimits()
    await acknowledged(part, limits, lambda: None)  # type: ignore[arg-type]
    return part, limits


async def test_a_send_refused_as_fenced_raises_the_fence_itself() -> None:
    """A batch refused for a stale epoch (after a transaction timeout) raises
    ProducerFenced, not SendRefused, even behind another refusal: the partition is then
    parked as fenced, whichever request met the new epoch first."""
    with pytest.raises(ProducerFenced):
        await judge(sent("out", KafkaConnectionError()), sent("out", ProducerFenced()))


async def test_another_refusal_raises_send_refused_naming_the_topic() -> None:
    """A refused send that is no fence: SendRefused, naming topic and error."""
    with pytest.raises(SendRefused, match="records to dlq: MessageSizeTooLargeError"):
        await judge(sent("out", None), sent("dlq", MessageSizeTooLargeError()))


async def test_too_large_refusals_are_learnt_before_raising() -> None:
    """The rewound transaction sends a topic refused as too large one record per batch."""
    limits = SizeLimits()
    part = SimpleNamespace(sent=[sent("dlq", MessageSizeTooLargeError())])
    with pytest.raises(SendRefused):
        await acknowledged(part, limits, lambda: None)  # type: ignore[arg-type]
    assert limits.single_topics == {"dlq"}


async def test_all_acknowledged_returns_and_empties_the_sends() -> None:
    """Every send acknowledged: no error, nothing left to wait for."""
    part, _ = await judge(sent("out", None), sent("dlq", None))
    assert part.sent == []
