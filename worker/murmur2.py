"""Kafka's default partitioner in pure Python: murmur2 of the key bytes, as the Java client
computes it (``org.apache.kafka.common.utils.Utils.murmur2``), and the partition it picks.

``fusion-worker fuse --partitions N`` uses it to give each request the partition number a
Java or aiokafka producer keyed by request_id would have chosen, so that fusing a file
equals replaying a topic with N partitions. Kept free of aiokafka so that ``fuse`` does not
import the Kafka client.
"""

from __future__ import annotations

import struct

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` as a signed int, equal to Java's ``Utils.murmur2``."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length // 4
    # All arithmetic is modulo 2**32, as Java's int overflow; >> on a masked (non-negative)
    # value is Java's unsigned >>>.
    for k in struct.unpack_from(f"<{n4}I", data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    base = length & ~3
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner assigns a keyed record:
    ``toPositive(murmur2(key)) % partitions`` (toPositive clears the sign bit)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
