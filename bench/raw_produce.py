"""The latency generator's producer: produce requests written straight to the partition
leaders' sockets, its responses read between ticks.

The generator (bench/latency.py) shares the machine's two cores with the worker and
the broker, and stands in for model services on other machines, so what it costs is
the benchmark's, not the worker's. Through aiokafka's producer each 2 ms tick cost
about 0.4 ms of the generator's CPU whatever it sent: a task hand-off to the sender,
the request through aiokafka's schema, the response decoded field by field through
it. At 110,000 events/s the generator used about 0.32 of a core to publish, 0.2 of it
for the ticks; with this module 0.19-0.24 of a core, the stamps included
(docs/benchmarks.md, twenty-eighth round).

Here a tick is what it has to be: one record batch per partition (the worker's
compiled builder where the extension is there, else aiokafka's), one produce request
(v7, acks=1) per leader, written with one ``sendall``; responses are read without
waiting, each partition's error code checked (nothing is lost silently: a batch is
sent again or the producer raises, below). The bytes of the records are the ones
aiokafka's producer writes for the same keys, values and timestamps (the builders are
the same), so the broker and the worker see the same input.

Kafka takes one record batch per partition in a produce request (v3 and later): a
tick whose records fill a batch sends the rest in a request of its own.

A retriable error (a partition whose leader is not ready yet, as on a topic created a
moment before) sends that partition's batch again with the next requests, up to
RETRIES times; so, as with any Kafka producer that has several requests in flight and
no idempotence, a retried batch may land after later ones of its partition. The
benchmark matches events by request id, not by offset. Leaders are looked up once:
one that moves shows as the same error until the retries run out.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.producer.message_accumulator import BatchBuilder

from worker import native
from worker.runtime.produce_encoding import encode_flat

API_KEY = 0  # Produce
API_VERSION = 7  # the layout aiokafka's producer writes too; Kafka 4 takes 3 and later
ACKS = 1
TIMEOUT_MS = 30_000
CLIENT_ID = b"fusion-bench-generator"
# Below the broker's default max.message.bytes (1 MiB) with room for the request.
BATCH_BYTES = 512 * 1024
# How long ``flush`` waits for the last responses.
FLUSH_TIMEOUT_S = 30.0
# A batch refused with a retriable error is sent again this many times at most; ``flush``
# waits this long before sending one again (between ticks the tick is the wait).
RETRIES = 100
RETRY_BACKOFF_S = 0.05

_head = struct.Struct(">ihhih")  # size, api key, version, correlation id, client id length
_int = struct.Struct(">i")
_short = struct.Struct(">h")
_partition_error = struct.Struct(">ih")  # partition, error code


@dataclass(slots=True)
class _Request:
    """What ``encode_flat`` reads of a produce request (aiokafka's struct costs more to
    make, and a request is made every tick)."""

    transactional_id: str | None
    required_acks: int
    timeout: int
    topics: list[tuple[str, list[tuple[int, bytes]]]]


class ProduceFailed(RuntimeError):
    """The broker refused records of a produce request."""


def encode_request(
    correlation_id: int, topic: str, batches: list[tuple[int, bytes]], acks: int = ACKS
) -> bytes:
    """One framed produce request (v7, no transactional id) of one record batch per
    partition in ``batches``: the bytes aiokafka writes for the same request. The body
    is the worker's flat encoding (one join, not one copy of the batches per level)."""
    body = encode_flat(_Request(None, acks, TIMEOUT_MS, [(topic, batches)]))
    size = _head.size - 4 + len(CLIENT_ID) + len(body)
    head = _head.pack(size, API_KEY, API_VERSION, correlation_id, len(CLIENT_ID))
    return b"".join((head, CLIENT_ID, body))


def decode_response(frame: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """A produce response (v7) without its size: its correlation id and each
    partition's (topic, partition, error code)."""
    at = 0

    def take(fmt: struct.Struct) -> Any:
        nonlocal at
        values = fmt.unpack_from(frame, at)
        at += fmt.size
        return values[0] if len(values) == 1 else values

    correlation_id = take(_int)
    errors: list[tuple[str, int, int]] = []
    for _ in range(take(_int)):
        length = take(_short)
        topic = frame[at : at + length].decode()
        at += length
        for _ in range(take(_int)):
            partition, code = take(_partition_error)
            at += 24  # base offset, log-append time, log start offset (Int64 each)
            errors.append((topic, partition, code))
    return correlation_id, errors


def new_batch() -> Any:
    """An empty record batch builder: magic 2, uncompressed, not transactional, no
    producer id (aiokafka's producer without idempotence writes the same)."""
    if native.RecordBatch is not None:
        return native.RecordBatch(BATCH_BYTES, False)
    return BatchBuilder(BATCH_BYTES, 0, is_transactional=False)


def fill(batch: Any, keys: list[bytes], values: list[bytes], start: int, ts: int) -> int:
    """Append records ``start`` onwards to ``batch`` until it is full; the index of the
    first one not appended."""
    if hasattr(batch, "append_many"):
        stop: int = batch.append_many(keys, values, start, ts)
        return stop
    for i in range(start, len(keys)):
        if batch.append(timestamp=ts, key=keys[i], value=values[i]) is None:
            return i
    return len(keys)


def build(batch: Any) -> bytes:
    """The record batch's bytes, as aiokafka's sender takes them (``_build``)."""
    return bytes(batch._build())


@dataclass
class _Leader:
    sock: socket.socket
    partitions: list[int]
    # Per request not answered yet (by correlation id): its batch per partition.
    waiting: dict[int, dict[int, bytes]] = field(default_factory=dict)
    buffer: bytearray = field(default_factory=bytearray)


class RawProducer:
    """``await RawProducer.connect(bootstrap, topic)``; per tick ``add`` each partition's
    records, then ``send``; ``poll`` between ticks, ``flush`` and ``close`` at the end."""

    def __init__(self, topic: str, leaders: dict[int, socket.socket], owner: dict[int, int]):
        self.topic = topic
        self._leaders = {
            node: _Leader(sock, [p for p, n in owner.items() if n == node])
            for node, sock in leaders.items()
        }
        self._owner = owner  # partition -> leader node
        # Per partition, record batches to write (``add``'s) and to write again first.
        self._pending: dict[int, list[bytes]] = defaultdict(list)
        self._retries: dict[int, list[bytes]] = defaultdict(list)
        self._attempts: dict[bytes, int] = {}  # a retried batch -> how often it failed
        self._correlation = 0
        self.count = 0  # records handed to ``add``

    @classmethod
    async def connect(cls, bootstrap: str, topic: str) -> RawProducer:
        """Find ``topic``'s partition leaders (aiokafka's metadata) and connect to each."""
        client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id=CLIENT_ID.decode())
        await client.bootstrap()
        try:
            client.add_topic(topic)
            await client._wait_on_metadata(topic)
            partitions = client.cluster.partitions_for_topic(topic) or set()
            owner: dict[int, int] = {}
            for p in sorted(partitions):
                node = client.cluster.leader_for_partition(TopicPartition(topic, p))
                if node is None or node < 0:
                    raise ProduceFailed(f"{topic}[{p}] has no leader")
                owner[p] = node
            addresses = {n: client.cluster.broker_metadata(n) for n in set(owner.values())}
        finally:
            await client.close()
        leaders: dict[int, socket.socket] = {}
        for node, meta in addresses.items():
            sock = socket.create_connection((meta.host, meta.port), timeout=FLUSH_TIMEOUT_S)
            sock.settimeout(None)  # blocking writes; reads never wait (MSG_DONTWAIT, select)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            leaders[node] = sock
        return cls(topic, leaders, owner)

    def add(self, partition: int, keys: list[bytes], values: list[bytes], ts: int) -> None:
        """Queue ``keys`` and ``values`` (one record each, timestamp ``ts``) for
        ``partition``, in as few record batches as they fit."""
        if partition not in self._owner:
            raise ProduceFailed(f"{self.topic} has no partition {partition}")
        start = 0
        while start < len(keys):
            batch = new_batch()
            stop = fill(batch, keys, values, start, ts)
            if stop == start:
                raise ProduceFailed(f"a record of {len(values[start])} bytes fits no batch")
            self._pending[partition].append(build(batch))
            start = stop
        self.count += len(keys)

    def send(self) -> None:
        """Write what ``add`` queued, batches to retry first: per leader, a request with
        each partition's next batch, until every batch is written."""
        retries, self._retries = self._retries, defaultdict(list)
        pending, self._pending = self._pending, defaultdict(list)
        for p, batches in retries.items():
            pending[p][:0] = batches
        for leader in self._leaders.values():
            queues = [(p, pending[p]) for p in leader.partitions if pending.get(p)]
            while queues:
                batches = [(p, q.pop(0)) for p, q in queues]
                self._correlation += 1
                leader.sock.sendall(encode_request(self._correlation, self.topic, batches))
                leader.waiting[self._correlation] = dict(batches)
                queues = [(p, q) for p, q in queues if q]

    def poll(self) -> None:
        """Read the responses already there; raise on a partition's error."""
        for leader in self._leaders.values():
            self._read(leader)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Send what is queued and wait until every request is answered."""
        self.send()
        end = time.monotonic() + timeout_s
        while True:
            for leader in self._leaders.values():
                while leader.waiting:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise ProduceFailed(f"{len(leader.waiting)} requests unanswered")
                    select.select([leader.sock], [], [], left)
                    self._read(leader)
            if not self._retries:
                return
            time.sleep(RETRY_BACKOFF_S)
            self.send()

    def close(self) -> None:
        for leader in self._leaders.values():
            leader.sock.close()

    def _read(self, leader: _Leader) -> None:
        """Take what the leader's socket holds, without waiting; check whole responses."""
        try:
            data = leader.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            raise ProduceFailed("the broker closed the connection")
        buffer = leader.buffer
        buffer += data
        while len(buffer) >= 4:
            (size,) = _int.unpack_from(buffer, 0)
            if len(buffer) < 4 + size:
                break
            correlation_id, errors = decode_response(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
            sent = leader.waiting.pop(correlation_id, {})
            for topic, partition, code in errors:
                batch = sent.get(partition)
                if code:
                    self._failed(topic, partition, code, batch)
                elif batch is not None and self._attempts:  # retried before: done
                    self._attempts.pop(batch, None)

    def _failed(self, topic: str, partition: int, code: int, batch: bytes | None) -> None:
        """Queue a batch refused with a retriable error to be sent again; raise on any
        other error, or once it has failed RETRIES times."""
        error = for_code(code)
        attempts = 1 if batch is None else self._attempts.get(batch, 0) + 1
        if batch is None or not error.retriable or attempts >= RETRIES:
            raise ProduceFailed(f"{topic}[{partition}]: {error.__name__} ({attempts} tries)")
        self._attempts[batch] = attempts
        self._retries[partition].append(batch)
