"""The compiled hot path, when it is there: the only module importing ``fusion_native``,
an optional extension written in Rust (``native/`` in the repository; ``make`` builds
it into the virtualenv, the container image installs it). It holds the result writer
(used by ``worker.fusion.native``), the packing of a batch's members (used by
``worker.fusion.batch``), the join's memory of fused ids (used by ``worker.join_fused``),
the live join of a partition (used by ``worker.join_compiled``), the decoder of the
common event (used by ``worker.decode``), Kafka's default partitioner for a batch of keys
(used by ``worker.runtime.partitioner``), the producer's record batches (used by
``worker.runtime.record_batch``), the batched histograms' bucket counts (used by
``worker.metrics_histogram``), the CRC check of fetched record batches and the parser of
a fetched partition's records (used by ``worker.runtime.raw_records``); each gives what
the Python code (or aiokafka's) gives, which stays for everything they do not cover.

Without the extension, or with ``FUSION_NATIVE=0`` in the environment, these names are
None and the worker runs on Python alone (the same output, more CPU per event).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

classification_json: Callable[..., Any] | None = None
FastDecoder: Callable[..., Any] | None = None
partitions_for: Callable[[list[bytes], int], list[int]] | None = None
partition_rows: Callable[[list[bytes], int], list[tuple[int, list[int]]]] | None = None
RecordBatch: Callable[[int, bool], Any] | None = None
pack_members: Callable[..., tuple[bytearray, bytearray] | None] | None = None
FusedIds: Callable[[int], Any] | None = None
Buckets: Callable[[list[float]], Any] | None = None
JoinCore: Callable[..., Any] | None = None
first_corrupt_batch: Callable[[bytes], int | None] | None = None
Fetched: Any = None  # the class; its runs are ``Run``s
Run: Any = None

if os.environ.get("FUSION_NATIVE", "1") != "0":
    try:
        import fusion_native

        classification_json = fusion_native.classification_json
        FastDecoder = fusion_native.FastDecoder
        partitions_for = fusion_native.partitions_for
        partition_rows = fusion_native.partition_rows
        RecordBatch = fusion_native.RecordBatch
        pack_members = fusion_native.pack_members
        FusedIds = fusion_native.FusedIds
        Buckets = fusion_native.Buckets
        JoinCore = fusion_native.JoinCore
        first_corrupt_batch = fusion_native.first_corrupt_batch
        Fetched = fusion_native.Fetched
        Run = fusion_native.Run
    except ImportError:  # not built: Python alone
        pass
