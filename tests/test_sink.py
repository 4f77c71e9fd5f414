"""The sink's vectorised partitioner agrees with Kafka's default partitioner."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.murmur2 import partition_for
from worker.runtime.partitioner import partitions_for

keys = st.lists(st.binary(min_size=0, max_size=40), min_size=0, max_size=200)


@given(keys=keys, partitions=st.integers(min_value=1, max_value=1000))
def test_partitions_for_equals_the_one_key_murmur2(keys: list[bytes], partitions: int) -> None:
    """Every key gets the partition worker.murmur2 gives it, whether it is hashed alone
    or with numpy among many keys of its length."""
    assert partitions_for(keys, partitions) == [partition_for(k, partitions) for k in keys]


@given(length=st.integers(min_value=0, max_value=13), partitions=st.integers(1, 64))
def test_many_keys_of_one_length_take_the_numpy_path_and_agree(
    length: int, partitions: int
) -> None:
    """Hundreds of keys of one length (the numpy path, every tail length 0-3) agree."""
    keys = [bytes((i * 31 + j) % 256 for j in range(length)) for i in range(300)]
    assert partitions_for(keys, partitions) == [partition_for(k, partitions) for k in keys]
