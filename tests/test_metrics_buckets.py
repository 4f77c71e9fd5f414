"""The batched histograms' bucket counts, compiled (``native/src/histogram.rs``) and in
numpy (``worker/metrics_histogram.py``): the same counts and the same sum, to the last
bit, for every batch of milliseconds. ``tests/test_metrics.py`` checks the exposition
against the client's own ``Histogram`` on the compiled series."""

from __future__ import annotations

import math
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.metrics_histogram import LATENCY_BUCKETS, _Series

BOUNDS = np.array([*LATENCY_BUCKETS, math.inf])
# Values right on the bucket bounds as well as anywhere, before and after 0.
ON_BOUNDS = st.sampled_from([b * 1000 for b in LATENCY_BUCKETS])
INTS = ON_BOUNDS.map(int) | st.integers(-(2**40), 2**40)
FLOATS = ON_BOUNDS | st.floats(allow_nan=True, allow_infinity=True) | st.just(-0.0)
BATCH = st.lists(INTS, max_size=40).map(lambda ms: struct.pack(f"={len(ms)}q", *ms)) | st.lists(
    INTS | FLOATS, max_size=40
)


def _both() -> tuple[_Series, _Series]:
    assert native.Buckets is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    compiled, numpy_only = _Series(BOUNDS), _Series(BOUNDS)
    numpy_only.buckets = None
    return compiled, numpy_only


def _same_float(a: float, b: float) -> bool:
    return struct.pack("=d", a) == struct.pack("=d", b) or (math.isnan(a) and math.isnan(b))


@settings(max_examples=300)
@given(batches=st.lists(BATCH, max_size=5))
def test_the_compiled_counts_are_the_numpy_ones(batches: list[bytes | list[float]]) -> None:
    """Batches of int64 bytes and of numbers (bounds, negatives, -0.0, NaN, infinities):
    the same count per bucket and the same sum, bit for bit."""
    compiled, numpy_only = _both()
    for values in batches:
        compiled.observe_ms(values, BOUNDS)
        numpy_only.observe_ms(values, BOUNDS)
    counts, total = compiled.snapshot()
    expected_counts, expected_total = numpy_only.snapshot()
    assert counts.tolist() == expected_counts.tolist()
    assert _same_float(total, expected_total)


def test_a_series_uses_the_compiled_counts_where_installed() -> None:
    """With the extension built, a series keeps its counts in ``Buckets``."""
    assert native.Buckets is not None
    assert isinstance(_Series(BOUNDS).buckets, native.Buckets)  # type: ignore[arg-type]


def test_values_fall_in_the_first_bucket_whose_bound_is_not_below_them() -> None:
    """1 ms is in the 0.001 s bucket, 1.5 ms in the next; a negative delay counts as 0
    and adds nothing to the sum."""
    compiled, _ = _both()
    compiled.observe_ms([1, 1.5, -7], BOUNDS)
    counts, total = compiled.snapshot()
    assert counts.tolist()[:3] == [2, 1, 0]
    assert total == 0.001 + 0.0015
