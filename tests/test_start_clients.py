"""``start_clients`` (worker/runtime/connect.py): the exactly-once producers of the
partitions a worker opens start at once, and a failed start comes out as its own error.

The clients are stand-ins with aiokafka's ``start``: what is tested is the scheduling
(tests/integration/test_exactly_once*.py start real ones)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from worker.runtime.connect import start_clients


class Client:
    """A client whose ``start`` waits for ``gate``; ``error`` makes it fail instead."""

    def __init__(self, gate: asyncio.Event, error: Exception | None = None) -> None:
        self.gate = gate
        self.error = error
        self.began = False
        self.started = False
        self.cancelled = False

    async def start(self) -> None:
        self.began = True
        if self.error is not None:
            raise self.error
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.started = True


async def test_every_start_begins_before_any_ends() -> None:
    """All starts are under way together: the gate opens only once each has begun."""
    gate = asyncio.Event()
    clients = [Client(gate) for _ in range(4)]
    task = asyncio.create_task(start_clients(clients))
    done, _ = await asyncio.wait([task], timeout=0.05)
    assert not done  # every start waits at the gate
    assert all(c.began for c in clients)
    gate.set()
    await task
    assert all(c.started for c in clients)


async def test_a_failed_start_is_raised_and_cancels_the_others() -> None:
    """The failure comes out as the client's own error (not an exception group), and
    the starts still waiting are cancelled."""
    gate = asyncio.Event()
    waiting = [Client(gate), Client(gate)]
    failing = Client(gate, KafkaConnectionError("coordinator away"))
    with pytest.raises(KafkaConnectionError, match="coordinator away"):
        async with asyncio.timeout(5):  # one start after the other would wait forever
            await start_clients([*waiting, failing])
    assert all(c.cancelled for c in waiting)
    assert not any(c.started for c in waiting)
