"""The delivery protocol: what the loop (worker/runtime/loop.py) needs of a delivery
mode, at-least-once (worker/runtime/at_least_once.py) or exactly-once
(worker/runtime/exactly_once.py), and the context the loop gives it.

The loop owns fetching, backpressure, liveness and the partition state
(``Partitions``); it calls the delivery at fixed points, all under its lock:
``start`` once, ``maintain`` before each fetch, ``emit`` with each step, ``commit``
every ``commit_interval_ms``, on revocation and at shutdown, ``assigned`` with each new
assignment, ``stop`` once. A delivery has no callback of its own; its one task is the
at-least-once periodic commit, which the loop's state sees only through what was
captured for it on the loop and through its outcome (committed offsets, pruned spans),
and which ``commit(wait=True)``, ``assigned`` and ``stop`` wait for or end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import TopicPartition

from worker.config import Config
from worker.engine import Step
from worker.metrics import Metrics
from worker.runtime.feedback import FeedbackLink
from worker.runtime.partitions import Partitions
from worker.runtime.too_large import Divert

Connect = Callable[[Callable[[], Awaitable[Any]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Context:
    """What a delivery may use of the loop: the configuration, the metrics, the
    partition state, ``beat`` (liveness, while waiting on the broker), ``connect``
    (retry a connecting step with the loop's backoff and fatal-error policy),
    ``feedback`` (the adaptive weights to snapshot and restore) and ``clock_ms``
    (the loop's clock)."""

    config: Config
    metrics: Metrics
    state: Partitions
    beat: Callable[[], None]
    connect: Connect
    feedback: FeedbackLink
    clock_ms: Callable[[], float]

    def divert(self) -> Divert:
        """Fused results too large for the output topic go to the DLQ, counted."""
        k = self.config.kafka
        metrics = self.metrics

        def count() -> None:
            metrics.dlq("too_large")
            metrics.output(k.dlq_topic, 1)

        return Divert(k.output_topic, k.dlq_topic, count)


class Delivery(Protocol):
    """A delivery mode, composed into the loop."""

    @property
    def consumer_options(self) -> Mapping[str, Any]:
        """Extra options of the consumer (exactly-once: read_committed)."""

    @property
    def opens_partitions(self) -> bool:
        """Whether a newly assigned partition stays paused until ``maintain`` opened it."""

    async def start(self) -> None:
        """Connect what the mode needs (producers, the changelog topic)."""

    async def maintain(self) -> None:
        """Before each fetch: the mode's own work (exactly-once opens partitions)."""

    async def open_due(self) -> None:
        """Open the assigned partitions waiting for ``maintain`` whose time has come (also
        called from the assignment callback, so they need not wait for the fetch)."""

    async def emit(self, step: Step) -> None:
        """Hand one step's outputs (per input partition number) to the producer(s)."""

    def holding(self) -> bool:
        """Whether outputs wait in an open batch: the loop comes back for them soon."""

    def held(self) -> set[int]:
        """Partition numbers that stay paused whatever the backpressure says."""

    async def commit(
        self, partitions: Collection[TopicPartition] | None = None, *, wait: bool = True
    ) -> None:
        """Make the outputs so far durable, then commit the input offsets (of
        ``partitions``, default all). ``wait=False`` (the loop's periodic commit): the
        mode may finish the commit in the background, from what it captured now; a
        commit with ``wait=True`` (revocation, shutdown) waits for that one first."""

    async def assigned(self, assigned: list[TopicPartition], new: set[int]) -> None:
        """A new assignment was applied to the partition state: drop what the mode
        keeps for partitions lost, take on the ``new`` partition numbers."""

    async def stop(self) -> None:
        """Close the mode's producers. Safe twice."""


class DeliveryFactory(Protocol):
    """A delivery mode's class: whether its engine tracks touched request ids is known
    before the loop builds the engine, and calling it with the context builds it."""

    # Whether the engine must report the request ids whose pending state changed.
    tracks_touched: bool

    def __call__(self, context: Context) -> Delivery: ...
