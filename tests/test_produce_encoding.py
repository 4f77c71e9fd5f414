"""The flat produce request encoding (worker/runtime/produce_encoding.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.protocol import produce
from aiokafka.protocol.types import Int32, Schema
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.runtime.produce_encoding import encode_flat, install

VERSIONS = [getattr(produce, f"ProduceRequest_v{v}") for v in range(3, 8)]

texts = st.text(max_size=12)
partitions = st.none() | st.lists(
    st.tuples(st.integers(0, 2**31 - 1), st.none() | st.binary(max_size=64)), max_size=4
)
requests = st.builds(
    produce.ProduceRequest_v7,
    st.none() | texts,
    st.integers(-1, 1),
    st.integers(0, 2**31 - 1),
    st.none() | st.lists(st.tuples(texts, partitions), max_size=3),
)


@settings(max_examples=300, derandomize=True)
@given(requests)
def test_the_flat_encoding_is_aiokafkas(request: Any) -> None:
    """Any produce request encodes to the bytes aiokafka's schema gives it."""
    expected = request.SCHEMA.encode([getattr(request, name) for name in request.SCHEMA.names])
    assert encode_flat(request) == expected


def test_installed_every_version_from_3_to_7_encodes_flat() -> None:
    """Once installed (twice is the same), versions 3-7 encode through ``encode_flat``
    and a request with record batches keeps aiokafka's bytes."""
    assert install()
    assert install()
    assert all(cls.encode is encode_flat for cls in VERSIONS)
    request = produce.ProduceRequest_v7(None, -1, 30_000, [("out", [(1, b"x" * 1000)])])
    assert request.encode() == request.SCHEMA.encode(
        [None, -1, 30_000, [("out", [(1, b"x" * 1000)])]]
    )


def test_an_unexpected_layout_keeps_aiokafkas_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version whose schema is not the expected one installs nothing, for any version."""
    for cls in VERSIONS:
        monkeypatch.delattr(cls, "encode", raising=False)
    # The topics an Int32 instead of an array.
    schema = VERSIONS[0].SCHEMA
    fields = (*schema.fields[:3], Int32)
    changed = type(
        "ProduceRequest_v5",
        (produce.ProduceRequest_v5,),
        {"SCHEMA": Schema(*zip(schema.names, fields, strict=True))},
    )
    monkeypatch.setattr(produce, "ProduceRequest_v5", changed)

    assert install() is False
    assert not any(cls.encode is encode_flat for cls in VERSIONS)
