"""The rebalance hand-off: aiokafka's rebalance callbacks hand their work (commit what
is revoked, apply an assignment) to the loop, and it runs between two batches, so the
partition state never changes while the loop emits or commits.

The loop holds its lock over each batch (hand-over work, the delivery's ``maintain``;
then the step, ``emit`` and a due ``commit``) and releases it only while it fetches;
the work of a callback runs under that lock. Why not a queue the loop drains: aiokafka's
``getmany`` blocks while a reassignment is in progress, until the assignment callback
has returned, so a callback waiting for the loop to drain its work would wait for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

Work = Callable[[], Awaitable[None]]


class HandOff:
    """Work handed over by callbacks, run under the loop's lock."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def run(self, work: Work) -> None:
        """Run ``work`` once the loop is between two batches (its error is raised here)."""
        async with self._lock:
            await work()


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, forwarded to the loop's."""

    def __init__(
        self,
        revoked: Callable[[list[TopicPartition]], Awaitable[None]],
        assigned: Callable[[list[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._assigned(list(assigned))
