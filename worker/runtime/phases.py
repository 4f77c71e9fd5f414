"""Where the loop's wall time goes, by phase (``fusion_loop_seconds_total{phase}``):

- ``fetch``: waiting for records and reading them (aiokafka parses the fetch responses
  here), the delivery's own work before the fetch, and the backoff after a broker error;
- ``process``: the engine step, queueing its outputs, counting it;
- ``clients``: the short yield after each batch, in which the Kafka clients send the
  outputs just queued and the next fetch request;
- ``commit``: the periodic commit's part on the loop (at-least-once finishes it in the
  background).

The shares of these rates say whether the loop waits for records (fetch), works on them
(process) or on the clients' requests (clients). Phases that run CPU work of the Kafka
clients (fetch, clients) are not idle time: a saturated worker shows in
``process_cpu_seconds_total`` near one core.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.metrics import LOOP_PHASES, Metrics


class Phases:
    """A lap clock: ``lap(phase)`` adds the time since the previous lap to ``phase``."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self._add = {p: metrics.loop_seconds.labels(p).inc for p in LOOP_PHASES}
        self._clock = clock
        self._last = clock()

    def reset(self) -> None:
        """Start timing now (the loop starts; the time before counts nowhere)."""
        self._last = self._clock()

    def lap(self, phase: str) -> None:
        now = self._clock()
        self._add[phase](now - self._last)
        self._last = now
