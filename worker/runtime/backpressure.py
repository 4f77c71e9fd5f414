"""Backpressure: pause every partition at ``join.max_pending`` pending requests, resume
below ``RESUME_SHARE`` of it, so the consumer does not flap between paused and resumed
on every request. Requests still finish by their deadlines while paused, so nothing is
dropped."""

from __future__ import annotations

import logging
from collections.abc import Callable

from worker.metrics import Metrics
from worker.runtime.cycles import CycleCollector
from worker.runtime.partitions import Partitions

log = logging.getLogger(__name__)

RESUME_SHARE = 0.9


def backpressure(
    state: Partitions,
    metrics: Metrics,
    limit: int,
    held: Callable[[], set[int]],
    cycles: CycleCollector,
) -> None:
    """After each batch: pause or resume by the pending count (``state.engine``'s), set
    ``fusion_pending_requests``; ``held``: partition numbers the delivery keeps paused."""
    consumer, pending = state.consumer, state.engine.pending
    assert consumer is not None
    metrics.set_pending_count(pending)  # every batch: the bound is watched through it
    if not state.paused and pending >= limit:
        consumer.pause(*consumer.assignment())
        state.paused = True
        metrics.set_paused(True)
        log.info("paused fetching: %d pending requests (max_pending %d)", pending, limit)
    elif state.paused and pending < limit * RESUME_SHARE:
        kept = held()
        consumer.resume(*[tp for tp in consumer.assignment() if tp.partition not in kept])
        state.paused = False
        metrics.set_paused(False)
        log.info("resumed fetching: %d pending requests", pending)
        # The paused fetches dropped buffered records in reference cycles.
        cycles.mark()
    cycles.maybe_collect()
