"""The latency generator's own produce requests (bench/raw_produce.py): the bytes
aiokafka writes for the same request, and its responses' error codes read back."""

from __future__ import annotations

import socket
import struct

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.api import RequestHeader_v1
from aiokafka.protocol.produce import ProduceRequest_v7, ProduceResponse_v7

from bench import raw_produce


def test_a_request_is_the_bytes_aiokafka_writes() -> None:
    """A framed request of two partitions equals aiokafka's header and produce request
    v7 for the same topic, batches, acks and timeout."""
    batches = [(0, b"first batch"), (3, b"second")]
    request = ProduceRequest_v7(None, 1, raw_produce.TIMEOUT_MS, [("lat-in", batches)])
    header = RequestHeader_v1(request, 42, raw_produce.CLIENT_ID.decode())
    body = header.encode() + request.encode()
    assert raw_produce.encode_request(42, "lat-in", batches) == struct.pack(">i", len(body)) + body


def test_a_response_gives_each_partitions_error_code() -> None:
    """A produce response v7 as aiokafka encodes it reads back as its correlation id and
    each partition's error code, in order."""
    response = ProduceResponse_v7(
        [("lat-in", [(0, 0, 17, -1, 0), (3, 10, -1, -1, -1)]), ("other", [(1, 0, 5, 9, 0)])], 0
    )
    frame = struct.pack(">i", 7) + response.encode()
    assert raw_produce.decode_response(frame) == (
        7,
        [("lat-in", 0, 0), ("lat-in", 3, 10), ("other", 1, 0)],
    )


def test_fill_stops_at_the_first_record_a_full_batch_cannot_take() -> None:
    """A record batch takes records until the next would overflow it; ``fill`` then gives
    that record's index, for a batch of its own."""
    keys = [b"k%d" % i for i in range(40)]
    values = [b"v" * 100] * 40
    compiled = type(raw_produce.new_batch())
    for batch in (compiled(1024, False), BatchBuilder(1024, 0, is_transactional=False)):
        stop = raw_produce.fill(batch, keys, values, 0, 1_000)
        assert 0 < stop < len(keys)
        assert raw_produce.fill(batch, keys, values, stop, 1_000) == stop  # full


def test_the_compiled_batch_is_aiokafkas_bytes() -> None:
    """The batch ``new_batch`` makes (the compiled one, where the extension is there) is
    built into the bytes aiokafka's producer's builder writes for the same records."""
    keys = [b"k%d" % i for i in range(5)]
    values = [b"value-%d" % i for i in range(5)]
    ours = raw_produce.new_batch()
    theirs = BatchBuilder(raw_produce.BATCH_BYTES, 0, is_transactional=False)
    assert raw_produce.fill(ours, keys, values, 0, 1_234) == 5
    assert raw_produce.fill(theirs, keys, values, 0, 1_234) == 5
    assert raw_produce.build(ours) == raw_produce.build(theirs)


def _answer(broker: socket.socket, code: int, topic: str = "lat-in") -> bytes:
    """Read one produce request of one partition from ``broker``'s end of the connection,
    answer it with ``code`` for partition 0, and return the request's batch bytes."""
    (size,) = struct.unpack(">i", broker.recv(4, socket.MSG_WAITALL))
    request = broker.recv(size, socket.MSG_WAITALL)
    (correlation_id,) = struct.unpack_from(">i", request, 4)
    # api key, version, correlation id, client id, transactional id, acks, timeout, one
    # topic (count, name), one partition (count, index), then the batch's length.
    at = 8 + 2 + len(raw_produce.CLIENT_ID) + 2 + 2 + 4 + 4 + 2 + len(topic) + 4 + 4
    (length,) = struct.unpack_from(">i", request, at)
    response = ProduceResponse_v7([(topic, [(0, code, -1, -1, -1)])], 0).encode()
    frame = struct.pack(">i", correlation_id) + response
    broker.sendall(struct.pack(">i", len(frame)) + frame)
    return request[at + 4 : at + 4 + length]


def test_a_batch_refused_with_a_retriable_error_is_sent_again() -> None:
    """A partition whose leader is not ready (NOT_LEADER_OR_FOLLOWER, 6) gets the same
    batch again with the next requests; once it is taken ``flush`` returns. (The broker's
    end is a socket pair: what a leader does is the integration tests'.)"""
    ours, broker = socket.socketpair()
    producer = raw_produce.RawProducer("lat-in", {1: ours}, {0: 1})
    try:
        producer.add(0, [b"k1", b"k2"], [b"v1", b"v2"], 1_764_000_000_000)
        producer.send()
        first = _answer(broker, 6)
        producer.poll()
        producer.send()
        assert _answer(broker, 0) == first
        producer.flush(timeout_s=5)
    finally:
        producer.close()
        broker.close()


def test_an_error_that_is_not_retriable_raises() -> None:
    """A partition refused for good (CORRUPT_MESSAGE, 2) raises, naming it and the
    error, instead of the records being dropped."""
    ours, broker = socket.socketpair()
    producer = raw_produce.RawProducer("lat-in", {1: ours}, {0: 1})
    try:
        producer.add(0, [b"k"], [b"v"], 1_764_000_000_000)
        producer.send()
        _answer(broker, 2)
        with pytest.raises(raw_produce.ProduceFailed, match=r"lat-in\[0\]: Corrupt"):
            producer.flush(timeout_s=5)
    finally:
        producer.close()
        broker.close()
