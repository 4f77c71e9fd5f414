"""Which batch builder a producer's batches are filled with: the compiled one
(``worker.native.RecordBatch``) when it can stand in for aiokafka's, else the producer's
own (``create_batch``).

The compiled builder writes the bytes aiokafka's ``DefaultRecordBatchBuilder`` writes
for the same records (uncompressed, magic 2; ``tests/test_record_batch.py`` compares
them) and has the methods aiokafka's producer calls on a ``BatchBuilder`` it was given
(``append``, ``close``, ``closed``, ``record_count``, ``size``, ``_set_producer_state``,
``_build``). Queueing a record into it is one call into compiled code, where aiokafka's
is a Python method around a Cython one.

It stands in only where it writes what aiokafka would: a producer that compresses
nothing and serialises nothing itself. The batch size and whether the producer is
transactional are read from aiokafka's internals, as ``create_batch`` reads them
(the pinned aiokafka minor, see pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

from worker import native


def batch_factory(producer: Any) -> Callable[[], Any]:
    """A function making an empty batch for ``producer``'s ``send_batch``."""
    own: Callable[[], Any] = producer.create_batch
    if native.RecordBatch is None or not isinstance(producer, AIOKafkaProducer):
        return own
    accumulator = producer._message_accumulator
    if (
        accumulator._compression_type != 0
        or producer._key_serializer is not None
        or producer._value_serializer is not None
    ):
        return own
    txn = producer._txn_manager
    transactional = txn is not None and txn.transactional_id is not None
    size: int = accumulator._batch_size
    make = native.RecordBatch
    return lambda: make(size, transactional)
