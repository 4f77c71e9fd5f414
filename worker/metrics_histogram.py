"""``BatchHistogram``: a Prometheus histogram observed a numpy batch of values at a time,
registered as a collector, and the bucket bounds of the worker's histograms. A part of
``worker.metrics`` (which re-exports them), kept apart because it is a collector of its
own, not a metric definition of the worker.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
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


class _Series:
    """One label set of a BatchHistogram: its bucket counts (per bucket, not cumulative)
    and the sum of its values, in the compiled ``Buckets`` when the extension is there,
    else in numpy."""

    __slots__ = ("buckets", "counts", "created", "total")

    def __init__(self, bounds: npt.NDArray[np.float64]) -> None:
        self.buckets = None if native.Buckets is None else native.Buckets(bounds.tolist())
        self.counts = np.zeros(len(bounds), dtype=np.int64)
        self.total = 0.0
        self.created = time.time()

    def observe_ms(self, values: bytes | Sequence[float], bounds: npt.NDArray[np.float64]) -> None:
        if self.buckets is not None:
            self.buckets.observe_ms(values)
            return
        ms = (
            np.frombuffer(values, dtype=np.int64)
            if isinstance(values, bytes)
            else np.array(values, dtype=np.float64)
        )
        seconds = np.maximum(ms / 1000.0, 0.0)
        n = len(bounds)
        # A value v belongs to the first bucket whose bound is >= v, as the client's
        # `v <= bound` scan finds; NaN (sorted past +Inf) is in none, as there.
        self.counts += np.bincount(np.searchsorted(bounds, seconds), minlength=n + 1)[:n]
        # cumsum adds one value after the other, as the client's running sum does;
        # a plain sum() would add pairwise and could differ in the last bits.
        self.total = float(np.cumsum(np.concatenate(([self.total], seconds)))[-1])

    def snapshot(self) -> tuple[npt.NDArray[np.int64], float]:
        if self.buckets is not None:
            counts, total = self.buckets.snapshot()
            return np.array(counts, dtype=np.int64), total
        return self.counts.copy(), self.total


class BatchHistogram:
    """A histogram observed a batch of values at a time, as a registry collector.

    The client's ``Histogram.observe`` takes one value per call (a label lookup, a lock
    and a scan of the buckets each), and the worker observes one value per result and per
    member: several per event. This keeps the bucket counts per label values in numpy
    and exposes them as a histogram family, with the samples the client's ``Histogram``
    of the same name, labels and buckets gives for the same values observed one by one,
    in the same order: cumulative ``_bucket`` per ``le``, ``_count``, ``_sum`` (summed in
    observation order, so equal to the last bit) and ``_created``.
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
        self._bounds = np.array(bounds)
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
            s.observe_ms(values, self._bounds)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> list[Metric]:
        with self._lock:
            snapshot = [(k, *s.snapshot(), s.created) for k, s in self._series.items()]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, counts, total, created in snapshot:
            # floats, as the client's bucket values are
            cumulative: list[float] = np.cumsum(counts).astype(np.float64).tolist()
            family.add_metric(labelvalues, list(zip(self._le, cumulative, strict=True)), total)
            if _CREATED:
                labels = dict(zip(self.labelnames, labelvalues, strict=True))
                family.samples.append(Sample(self.name + "_created", labels, created))
        return [family]
