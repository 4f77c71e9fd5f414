"""The batched histograms' bucket counts, compiled (``native/src/histogram.rs``) and in
numpy (``worker/metrics_histogram.py``): the same counts and the same sum, to the last
bit, for every batch of milliseconds. ``tests/test_metrics.py`` checks the exposition
against the client's own ``Histogram`` (on the compiled counts where they are built)."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.metrics_histogram import LATENCY_BUCKETS, Buckets, bucket_counts

BOUNDS = [*LATENCY_BUCKETS, math.inf]
# Values right on the bucket bounds as well as anywhere, before and after 0.
ON_BOUNDS = st.sampled_from([b * 1000 for b in LATENCY_BUCKETS])
INTS = ON_BOUNDS.map(int) | st.integers(-(2**40), 2**40)
FLOATS = ON_BOUNDS | st.floats(allow_nan=True, allow_infinity=True) | st.just(-0.0)
BATCH = st.lists(INTS, max_size=40).map(lambda ms: struct.pack(f"={len(ms)}q", *ms)) | st.lists(
    INTS | FLOATS, max_size=40
)


def _compiled() -> Any:
    assert native.Buckets is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    return native.Buckets(BOUNDS)


def _same_float(a: float, b: float) -> bool:
    return struct.pack("=d", a) == struct.pack("=d", b) or (math.isnan(a) and math.isnan(b))


@settings(max_examples=300)
@given(batches=st.lists(BATCH, max_size=5))
def test_the_compiled_counts_are_the_numpy_ones(batches: list[bytes | list[float]]) -> None:
    """Batches of int64 bytes and of numbers (bounds, negatives, -0.0, NaN, infinities):
    the same count per bucket and the same sum, bit for bit."""
    compiled, numpy_only = _compiled(), Buckets(BOUNDS)
    for values in batches:
        compiled.observe_ms(values)
        numpy_only.observe_ms(values)
    counts, total = compiled.snapshot()
    expected_counts, expected_total = numpy_only.snapshot()
    assert counts == expected_counts
    assert _same_float(total, expected_total)


def test_a_histogram_uses_the_compiled_counts_where_installed() -> None:
    """``bucket_counts`` gives the compiled counts when the extension is there."""
    assert type(bucket_counts(BOUNDS)) is native.Buckets


def test_values_fall_in_the_first_bucket_whose_bound_is_not_below_them() -> None:
    """1 ms is in the 0.001 s bucket, 1.5 ms in the next; a negative delay counts as 0
    and adds nothing to the sum."""
    for counts in (_compiled(), Buckets(BOUNDS)):
        counts.observe_ms([1, 1.5, -7])
        buckets, total = counts.snapshot()
        assert buckets[:3] == [2, 1, 0]
        assert total == 0.001 + 0.0015
