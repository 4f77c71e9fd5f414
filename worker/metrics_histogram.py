"""``BatchHistogram``: a Prometheus histogram observed a batch of values at a time,
registered as a collector, and the bucket bounds of the worker's histograms. A part of
``worker.metrics`` (which re-exports them), kept apart because it is a collector of its
own, not a metric definition of the worker.

A series' counts have two implementations with one interface (``observe_ms``,
``snapshot``): this module's ``Buckets`` (numpy) and the compiled extension's
(``native/src/histogram.rs``); ``bucket_counts`` gives the compiled one where it is
installed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from worker import native

# 1 ms .. 30 s: a complete request joins in milliseconds, a partial one at its deadline
# (timeout_ms, 1 s by default); the top buckets catch a stalled loop.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Records per fetched batch: 1 .. fetch_max_records (10 000 by default).
BATCH_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000)

# The client's own switch for the ``_created`` series, read once as the client does, so
# that the batched histograms follow the client's ones.
_CREATED_OFF = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower()
_CREATED = _CREATED_OFF not in ("true", "1", "t")
# The client's spelling of a bucket bound in ``le`` (untyped in the client).
_go_float = cast("Callable[[float], str]", floatToGoString)


class Counts(Protocol):
    """A series' bucket counts and sum (see Buckets)."""

    def observe_ms(self, values: bytes | Sequence[float]) -> None: ...
    def snapshot(self) -> tuple[list[int], float]: ...


def bucket_counts(bounds: Sequence[float]) -> Counts:
    """Empty counts for ``bounds``: the compiled ones where the extension is there."""
    if native.Buckets is None:
        return Buckets(bounds)
    return cast("Counts", native.Buckets(list(bounds)))


class Buckets:
    """A series' count per bucket (not cumulative) and the sum of its values, observed a
    batch of milliseconds at a time. The compiled extension's ``Buckets``
    (``native/src/histogram.rs``) does the same in one call, where these are half a
    dozen numpy calls on a few dozen values; tests/test_metrics_buckets.py compares them.

    ``bounds``: the buckets' upper bounds in seconds, ascending (+Inf last)."""

    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = np.array(bounds, dtype=np.float64)
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._total = 0.0

    def observe_ms(self, values: bytes | Sequence[float]) -> None:
        """Observe each value, in order, as seconds clamped at 0: ``values`` the bytes of
        native-endian int64 milliseconds (the result writer's arrival delays) or numbers
        (ms)."""
        ms = (
            np.frombuffer(values, dtype=np.int64)
            if isinstance(values, bytes)
            else np.array(values, dtype=np.float64)
        )
        seconds = np.maximum(ms / 1000.0, 0.0)
        n = len(self._bounds)
        # A value v belongs to the first bucket whose bound is >= v, as the client's
        # `v <= bound` scan finds; NaN (sorted past +Inf) is in none, as there.
        self._counts += np.bincount(np.searchsorted(self._bounds, seconds), minlength=n + 1)[:n]
        # cumsum adds one value after the other, as the client's running sum does;
        # a plain sum() would add pairwise and could differ in the last bits.
        self._total = float(np.cumsum(np.concatenate(([self._total], seconds)))[-1])

    def snapshot(self) -> tuple[list[int], float]:
        """(count per bucket, the sum of the values)."""
        return self._counts.tolist(), self._total


class _Series:
    """One label set of a BatchHistogram."""

    __slots__ = ("counts", "created")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.counts = bucket_counts(bounds)
        self.created = time.time()


class BatchHistogram:
    """A histogram observed a batch of values at a time, as a registry collector.

    The client's ``Histogram.observe`` takes one value per call (a label lookup, a lock
    and a scan of the buckets each), and the worker observes one value per result and per
    member: several per event. This keeps the bucket counts per label values
    (``bucket_counts``) and exposes them as a histogram family, with the samples the
    client's ``Histogram`` of the same name, labels and buckets gives for the same values
    observed one by one, in the same order: cumulative ``_bucket`` per ``le``, ``_count``,
    ``_sum`` (summed in observation order, so equal to the last bit) and ``_created``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = bounds
        self._le = [_go_float(b) for b in bounds]
        self._series: dict[tuple[str, ...], _Series] = {}
        # Observations come from the event loop, scrapes from the health server's thread.
        self._lock = threading.Lock()
        registry.register(self)

    def series(self, *labelvalues: str) -> None:
        """Create the series of ``labelvalues`` at 0 if it does not exist yet."""
        with self._lock:
            if labelvalues not in self._series:
                self._series[labelvalues] = _Series(self._bounds)

    def observe_ms(self, values: bytes | Sequence[float], *labelvalues: str) -> None:
        """Observe each of ``values``, milliseconds (the bytes of native-endian int64s, or
        numbers), as seconds clamped at 0, in the series of ``labelvalues``."""
        if not len(values):
            return
        with self._lock:
            s = self._series.get(labelvalues)
            if s is None:
                s = self._series[labelvalues] = _Series(self._bounds)
            s.counts.observe_ms(values)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        with self._lock:
            snapshot = [(k, *s.counts.snapshot(), s.created) for k, s in self._series.items()]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, counts, total, created in snapshot:
            # floats, as the client's bucket values are
            cumulative: list[float] = np.cumsum(counts).astype(np.float64).tolist()
            family.add_metric(labelvalues, list(zip(self._le, cumulative, strict=True)), total)
            if _CREATED:
                labels = dict(zip(self.labelnames, labelvalues, strict=True))
                family.samples.append(Sample(self.name + "_created", labels, created))
        return [family]
