"""Kafka's default partitioner for a whole batch of keys: ``toPositive(murmur2(key)) %
partitions``, as Java's client and aiokafka compute it: by the compiled extension when
it is there (``worker.native``), else vectorised with numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from worker import native
from worker.murmur2 import murmur2

# Below this many keys of one length, murmur2 one key at a time costs less than numpy.
_VECTOR_MIN_KEYS = 16
_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


def partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """The partition of each key under Kafka's default partitioner,
    ``toPositive(murmur2(key)) % partitions``, as ``worker.murmur2.partition_for`` gives
    it: by the compiled extension in one call, else ``numpy_partitions_for``."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if native.partitions_for is not None:
        # numpy's cost per call dominates the small batches of a step at moderate load
        # (about 6 % of the worker's CPU at 30,000 events/s).
        return native.partitions_for(keys if type(keys) is list else list(keys), partitions)
    return numpy_partitions_for(keys, partitions)


def numpy_partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """``partitions_for`` with numpy, for all keys of one length at once (one
    Python-level murmur2 costs about as much as queueing the record)."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, rows in by_length.items():
        if len(rows) < _VECTOR_MIN_KEYS:
            for i in rows:
                out[i] = (murmur2(keys[i]) & 0x7FFFFFFF) % partitions
            continue
        joined = b"".join([keys[i] for i in rows])
        data = np.frombuffer(joined, dtype=np.uint8).reshape(len(rows), length)
        h = np.full(len(rows), (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
        # uint32 arithmetic wraps modulo 2**32, as Java's int does.
        n4 = length // 4
        if n4:
            blocks = np.ascontiguousarray(data[:, : 4 * n4]).view("<u4")
            for j in range(n4):
                k = blocks[:, j] * _M
                k ^= k >> np.uint32(24)
                k *= _M
                h *= _M
                h ^= k
        tail, base = length & 3, length & ~3
        if tail == 3:
            h ^= data[:, base + 2].astype(np.uint32) << np.uint32(16)
        if tail >= 2:
            h ^= data[:, base + 1].astype(np.uint32) << np.uint32(8)
        if tail >= 1:
            h ^= data[:, base].astype(np.uint32)
            h *= _M
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
        parts: list[int] = ((h & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()
        for i, part in zip(rows, parts, strict=True):
            out[i] = part
    return out


def partition_rows(keys: Sequence[bytes], partitions: int) -> list[tuple[int, list[int]]]:
    """The keys' positions grouped by ``partitions_for``'s partition: ``(partition,
    rows)`` for each partition that has a key, in ascending order, each one's rows in
    order. One compiled call where the extension is there; grouping a step's keys in
    Python cost about 100 ns a key."""
    if native.partition_rows is not None and partitions >= 1:
        return native.partition_rows(keys if type(keys) is list else list(keys), partitions)
    return rows_by_partition(partitions_for(keys, partitions))


def rows_by_partition(partitions: Sequence[int]) -> list[tuple[int, list[int]]]:
    """``(partition, rows)`` for each partition number of ``partitions``, ascending, with
    the positions where it stands, in order."""
    rows: dict[int, list[int]] = {}
    for i, p in enumerate(partitions):
        rows.setdefault(p, []).append(i)
    return sorted(rows.items())
