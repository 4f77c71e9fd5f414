"""Exactly-once failure paths on the real broker: a send the broker refuses inside a
transaction, and a worker frozen mid-transaction (fenced by a peer or by the transaction
timeout) that wakes up again."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.chaos import compare, reference
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import (
    EOS,
    PrivateBroker,
    WorkerProcess,
    free_port,
    make_events,
    metric,
    read_committed,
)
from tests.kafka_fixtures import TopicFactory, decode_values, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def with_small_dlq(
    make_topics: TopicFactory, bootstrap: str, tmp_path: Path, partitions: int, dlq_bytes: int
) -> Pipeline:
    """Fresh topics whose DLQ takes at most ``dlq_bytes`` per batch (max.message.bytes)."""
    ins = await make_topics(partitions, prefix="in")
    (out,) = await make_topics(partitions, prefix="out")
    config = {"max.message.bytes": str(dlq_bytes)}
    (dlq,) = await make_topics(partitions, prefix="dlq", config=config)
    return Pipeline(tmp_path, bootstrap, ins, out, dlq)


async def test_a_dead_letter_the_broker_refuses_is_rewound_and_sent_without_its_value(
    kafka_bootstrap: str,
    make_topics: TopicFactory,
    tmp_path: Path,
    spawn_worker: WorkerFactory,
) -> None:
    """A 2 MB event over the DLQ topic's max.message.bytes: the transaction holding its
    dead letter is not committed without it; it is rewound, the dead letter goes out
    without the value, and every good request is fused exactly once."""
    p = await with_small_dlq(make_topics, kafka_bootstrap, tmp_path, 2, 1_048_576)
    cfg = p.config(kafka=EOS, join={"timeout_ms": 60_000})
    events = make_events(300, seed=21)
    huge = b'{"request_id": "huge", "pad": "' + b"x" * 2_000_000 + b'"}'
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    records.insert(450, (b"huge", huge))
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    await produce(p.bootstrap, p.inputs[0], records)

    results = decode_values(await read_committed(p.bootstrap, p.output, 300))
    dead = await read_committed(p.bootstrap, p.dlq, 1)

    assert compare(results, reference(cfg, events)) == (0, 0, 0), worker.logs()
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert headers["error"] == b"too_large"
    assert "value_omitted" in headers
    _, text = worker.get("/metrics")
    assert metric(text, "fusion_transactions_total", outcome="aborted") >= 1


async def stream(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    """Publish ``records`` steadily, about 3,000 per second in small groups, so that the
    worker has outputs, and so open transactions, nearly all the time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    try:
        for i in range(0, len(records), 15):
            for key, value in records[i : i + 15]:
                await producer.send(topic, value, key=key)
            await asyncio.sleep(0.005)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for_commits(worker: WorkerProcess, publishing: asyncio.Task[None], n: int) -> None:
    """Until ``worker`` has committed ``n`` transactions while the stream still runs."""
    while metric(worker.get("/metrics")[1], "fusion_transactions_total", outcome="committed") < n:
        assert not publishing.done(), "the stream ended before the worker committed"
        await asyncio.sleep(0.05)


async def freeze_mid_stream(
    bootstrap: str, topic: str, worker: WorkerProcess, events: list[dict[str, Any]], s: float
) -> None:
    """Stream ``events``; once ``worker`` has committed transactions on all four
    partitions (so it is mid-stream), SIGSTOP it for ``s`` seconds."""
    assert worker.proc is not None
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    publishing = asyncio.create_task(stream(bootstrap, topic, records))
    await wait_for_commits(worker, publishing, 8)
    worker.proc.send_signal(signal.SIGSTOP)
    await asyncio.sleep(s)
    worker.proc.send_signal(signal.SIGCONT)
    await publishing


async def holds_open_transaction(bootstrap: str, topics: list[str], partitions: int) -> bool:
    """Whether a transaction with records in ``topics`` is open on the broker: a
    partition's last stable offset (the end a read_committed reader sees) is short of
    its high watermark."""
    ends = []
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
            ends.append(await consumer.end_offsets(tps))
        finally:
            await consumer.stop()
    stable, high = ends
    return any(stable[tp] < high[tp] for tp in high)


async def freeze_with_transaction_open(
    bootstrap: str, topic: str, worker: WorkerProcess, events: list[dict[str, Any]], s: float
) -> None:
    """Stream ``events`` and SIGSTOP ``worker`` for ``s`` seconds at a moment when the
    broker holds one of its transactions open. A stop that lands between a commit and
    the next transaction's first record leaves nothing for the broker to abort: that
    one is undone at once (SIGCONT) and tried again after the next commit."""
    assert worker.proc is not None
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    publishing = asyncio.create_task(stream(bootstrap, topic, records))
    commits = 8
    while True:
        await wait_for_commits(worker, publishing, commits)
        worker.proc.send_signal(signal.SIGSTOP)
        if await holds_open_transaction(bootstrap, ["out", "dlq"], 4):
            break
        worker.proc.send_signal(signal.SIGCONT)
        commits += 1
    await asyncio.sleep(s)
    worker.proc.send_signal(signal.SIGCONT)
    await publishing


def assert_fenced_and_running(worker: WorkerProcess) -> None:
    assert worker.proc is not None
    assert worker.proc.poll() is None, worker.logs()
    _, text = worker.get("/metrics")
    fenced = metric(text, "fusion_transactions_total", outcome="fenced")
    assert fenced >= 1, re.findall(r"fusion_transactions_total.*", text)
    assert worker.terminate() == 0, worker.logs()


async def test_a_worker_whose_transaction_timed_out_takes_its_partitions_back(
    private_broker: PrivateBroker, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The only worker is frozen past transaction_timeout_ms (the broker aborts its open
    transactions and bumps their epochs) but not past the session timeout: no
    rebalance comes by itself. It finds its producers fenced, asks the group to
    rebalance, opens the partitions again, and every request is fused exactly once."""
    bootstrap = private_broker.bootstrap
    kafka = {**EOS, "transaction_timeout_ms": 2000}
    cfg, port = await private_broker.pipeline(
        tmp_path, "eos-txn-timeout", 4, kafka=kafka, join={"timeout_ms": 60_000}
    )
    worker = spawn_worker(cfg, port)
    worker.wait_ready()
    events = make_events(4000, seed=22)
    # aiokafka's session timeout is 10 s; the dev broker looks for timed-out
    # transactions every second.
    await freeze_with_transaction_open(bootstrap, "in", worker, events, 5.0)

    results = decode_values(await read_committed(bootstrap, "out", 4000))
    assert compare(results, reference(cfg, events)) == (0, 0, 0), worker.logs()
    assert_fenced_and_running(worker)


async def test_a_zombie_fenced_by_its_successor_rejoins(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """A worker frozen past the session timeout while a peer takes its partitions over:
    on waking, its transactions are fenced; it drops those partitions, rejoins the
    group, keeps running, and every request is fused exactly once."""
    p: Pipeline = await pipeline(partitions=4)
    ports = [p.port, free_port()]
    configs = [
        p.config(f"w{i}.toml", port=ports[i], kafka=EOS, join={"timeout_ms": 60_000})
        for i in range(2)
    ]
    zombie = spawn_worker(configs[0], ports[0], "zombie")
    zombie.wait_ready()
    peer = spawn_worker(configs[1], ports[1], "peer")
    peer.wait_ready()
    events = make_events(4000, seed=23)
    await freeze_mid_stream(p.bootstrap, p.inputs[0], zombie, events, 16.0)

    results = decode_values(await read_committed(p.bootstrap, p.output, 4000))
    assert compare(results, reference(configs[0], events)) == (0, 0, 0), zombie.logs()
    assert_fenced_and_running(zombie)
    assert peer.terminate() == 0, peer.logs()


@pytest.mark.parametrize("kafka", [EOS, {}], ids=["exactly-once", "at-least-once"])
async def test_dead_letters_whose_batch_the_broker_refuses_go_one_per_batch(
    kafka: dict[str, Any],
    kafka_bootstrap: str,
    make_topics: TopicFactory,
    tmp_path: Path,
    spawn_worker: WorkerFactory,
) -> None:
    """Twenty 10 kB invalid events in a row, a DLQ topic taking 50 kB per batch: the
    batch of their dead letters is refused; then (after the rewind, exactly-once; on
    the re-send, at-least-once) they go one per batch, each with its value, and the
    good requests are fused exactly once."""
    p = await with_small_dlq(make_topics, kafka_bootstrap, tmp_path, 1, 50_000)
    cfg = p.config(kafka=kafka, join={"timeout_ms": 60_000})
    events = make_events(100, seed=24)
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    garbage = [(b"g%d" % i, b"{not json " + b"x" * 10_000) for i in range(20)]
    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    await produce(p.bootstrap, p.inputs[0], records[:150] + garbage + records[150:])

    results = decode_values(await read_committed(p.bootstrap, p.output, 100))
    dead = await read_committed(p.bootstrap, p.dlq, 20)

    assert compare(results, reference(cfg, events)) == (0, 0, 0), worker.logs()
    assert sorted(r.value for r in dead) == sorted(v for _, v in garbage), worker.logs()
