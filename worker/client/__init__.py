"""The client kit: what model services and gateways import to talk to the worker.

- ``PredictionPublisher``: validated prediction events, keyed by request_id with Kafka's
  default partitioner, batched, flushed on exit.
- ``FusedResults``: await the fused result of a request (an HTTP gateway's side).
- ``ConnectionOptions``: security and timeouts, with the names of the worker's ``[kafka]``
  keys.
- ``InvalidPrediction``: an event refused before sending (a ``FusionError``).
"""

from __future__ import annotations

from worker.client._options import ConnectionOptions
from worker.client._publisher import PredictionPublisher
from worker.client._results import FusedResults
from worker.client._validate import (
    TEXT_MAX_CHARS,
    InvalidPrediction,
    check_event,
    check_traceparent,
)

__all__ = [
    "TEXT_MAX_CHARS",
    "ConnectionOptions",
    "FusedResults",
    "InvalidPrediction",
    "PredictionPublisher",
    "check_event",
    "check_traceparent",
]
