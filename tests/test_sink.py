"""The sink's batch partitioners agree with Kafka's default partitioner, compiled or
numpy (Kafka's Java client checks worker.murmur2 itself: tests/integration/test_broker.py)."""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import native
from worker.murmur2 import partition_for
from worker.runtime.partitioner import numpy_partitions_for, partition_rows, partitions_for

keys = st.lists(st.binary(min_size=0, max_size=40), min_size=0, max_size=200)
Partitioner = Callable[[list[bytes], int], list[int]]
IMPLEMENTATIONS = pytest.mark.parametrize(
    "impl",
    [
        pytest.param(native.partitions_for, id="compiled"),
        pytest.param(numpy_partitions_for, id="numpy"),
        pytest.param(partitions_for, id="either"),
    ],
)


def _usable(impl: Partitioner | None) -> Partitioner:
    assert impl is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    return impl


@IMPLEMENTATIONS
@given(keys=keys, partitions=st.integers(min_value=1, max_value=2**31 - 1))
def test_partitions_for_equals_the_one_key_murmur2(
    impl: Partitioner | None, keys: list[bytes], partitions: int
) -> None:
    """Every key gets the partition worker.murmur2 gives it, whether it is hashed alone
    or among many keys of its length."""
    assert _usable(impl)(keys, partitions) == [partition_for(k, partitions) for k in keys]


@IMPLEMENTATIONS
@given(length=st.integers(min_value=0, max_value=13), partitions=st.integers(1, 64))
def test_many_keys_of_one_length_agree(
    impl: Partitioner | None, length: int, partitions: int
) -> None:
    """Hundreds of keys of one length (numpy's vector path, every tail length 0-3) agree."""
    keys = [bytes((i * 31 + j) % 256 for j in range(length)) for i in range(300)]
    assert _usable(impl)(keys, partitions) == [partition_for(k, partitions) for k in keys]


def test_no_partitions_is_refused() -> None:
    """Zero partitions is a ValueError, as for one key, not a division by zero."""
    with pytest.raises(ValueError, match="partitions must be >= 1, got 0"):
        partitions_for([b"a"], 0)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@given(keys=keys, partitions=st.integers(min_value=1, max_value=64))
def test_partition_rows_group_the_keys_by_their_partition(
    keys: list[bytes], partitions: int, compiled: bool
) -> None:
    """``partition_rows`` lists each partition that has a key, in ascending order, with
    the positions of its keys in order: ``partitions_for``'s answer grouped (compiled,
    and in Python where the extension is not there)."""
    expected: dict[int, list[int]] = {}
    for i, p in enumerate(partitions_for(keys, partitions)):
        expected.setdefault(p, []).append(i)
    with mock.patch.object(native, "partition_rows", native.partition_rows if compiled else None):
        assert partition_rows(keys, partitions) == sorted(expected.items())
