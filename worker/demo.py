"""`fusion-worker demo`: the whole loop on the local broker in one process.

Fresh demo topics, the streaming worker, three simulated models (steady; slow and
sometimes silent; fast but often wrong), fused results printed as they arrive, then
a summary and where the metrics are.
"""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.request
import uuid
from collections import Counter
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.config import Config, RuntimeConfig, build_config
from worker.runtime.connect import client_options
from worker.runtime.event_loop import loop_name, run_on
from worker.runtime.main import make_worker
from worker.simulate import publish

PARTITIONS = 4


def demo_config(bootstrap: str, metrics_port: int) -> Config:
    return build_config(
        {
            "kafka": {
                "bootstrap_servers": bootstrap,
                "group_id": f"fusion-demo-{uuid.uuid4().hex[:6]}",
                "input_topics": ["demo-predictions"],
                "output_topic": "demo-fused",
                "dlq_topic": "demo-dlq",
                "late_topic": "demo-late",
                "commit_interval_ms": 500,
            },
            "join": {"timeout_ms": 1000, "min_models": 2},
            "fusion": {"strategy": "soft_vote", "labels": ["negative", "neutral", "positive"]},
            "models": [
                {"name": "bert-base", "weight": 0.4},
                {"name": "distilbert", "weight": 0.35},
                {"name": "tfidf-logreg", "weight": 0.25},
            ],
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
        },
        source="<demo>",
    )


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def _fresh_topics(config: Config) -> None:
    """The demo starts from empty topics so that it shows this run only."""
    cfg = config.kafka
    names = [*cfg.input_topics, cfg.output_topic, cfg.dlq_topic, cfg.late_topic]
    admin = AIOKafkaAdminClient(**client_options(cfg))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        old = [n for n in names if n in existing]
        if old:
            await admin.delete_topics(old)
            for _ in range(100):
                if not set(await admin.list_topics()) & set(old):
                    break
                await asyncio.sleep(0.1)
        for _ in range(50):
            try:
                await admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
                break
            except Exception:  # noqa: BLE001 - deletion still settling: TopicExistsError
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _line(r: dict[str, Any]) -> str:
    missing = f" missing={','.join(r['missing'])}" if r["missing"] else ""
    if r["status"] == "insufficient":
        return f"  {r['request_id']}  {r['status']:<12}{missing}"
    return (
        f"  {r['request_id']}  {r['status']:<12} {r['label']:<9} "
        f"confidence={r['confidence']:.2f} agreement={r['agreement']:.2f} "
        f"latency={r['latency_ms']}ms{missing}"
    )


async def _demo(requests: int, rate: float) -> int:
    bootstrap = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    port = 9400 if _free(9400) else 9401
    config = demo_config(bootstrap, port)
    print(
        f"demo: broker {bootstrap}; topics demo-predictions ({PARTITIONS} partitions) -> "
        f"demo-fused; event loop {loop_name(asyncio.get_running_loop())}"
    )
    await _fresh_topics(config)
    worker = make_worker(config)
    await worker.start()
    run = asyncio.create_task(worker.run())
    await worker.assigned.wait()  # publish only once partitions are ours
    reader = AIOKafkaConsumer(
        config.kafka.output_topic, auto_offset_reset="earliest", **client_options(config.kafka)
    )
    await reader.start()
    print(f"demo: {requests} requests at {rate:.0f}/s from 3 simulated models; fused results:")
    producer = asyncio.create_task(publish(config, rate, requests, seed=7))
    results: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + requests / rate + 30
        while len(results) < requests and loop.time() < deadline:
            batch = await reader.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    r = orjson.loads(rec.value)
                    results.append(r)
                    if len(results) <= 20 or len(results) % 25 == 0 or r["status"] != "complete":
                        print(_line(r))
        await producer
        metrics = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
    finally:
        await reader.stop()
        worker.request_stop()
        await run
        await worker.stop()
    _summary(results, requests, config)
    shown = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith(("fusion_results_total", 'fusion_dlq_total{reason="json"'))
    ]
    print(f"\nmetrics were served at http://127.0.0.1:{port}/metrics, for example:")
    for ln in shown:
        print(f"  {ln}")
    print("and /healthz, /readyz; dashboards: deploy/grafana (with `docker compose up`)")
    return 0 if len(results) == requests else 1


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our own loopback server
        body: bytes = resp.read()
    return body.decode()


def _summary(results: list[dict[str, Any]], requests: int, config: Config) -> None:
    status = Counter(r["status"] for r in results)
    print(
        f"\nsummary: {len(results)} of {requests} requests fused: "
        + ", ".join(f"{s} {status.get(s, 0)}" for s in ("complete", "partial", "insufficient"))
    )
    print("per-model agreement with the fused label (requests the model reported on):")
    for model in config.model_names:
        votes = [
            r["members"][model]["label"] == r["label"]
            for r in results
            if r["label"] is not None and model in r["members"]
        ]
        missing = sum(model in r["missing"] for r in results)
        share = sum(votes) / len(votes) if votes else 0.0
        n = len(votes)
        print(f"  {model:<14} agreement {share:6.1%}   reported {n:4d}   missing {missing:4d}")


def run_demo(requests: int = 300, rate: float = 100.0) -> int:
    # The worker on the loop `fusion-worker run` takes by default.
    return run_on(RuntimeConfig().event_loop, _demo(requests, rate))
