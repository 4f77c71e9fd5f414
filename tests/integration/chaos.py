"""Chaos for exactly-once: kill -9 the worker at random moments while a stream flows,
restart it each time, then check every request is in the output exactly once with the
values an uninterrupted run gives.

Run by hand (the local broker must be up): ``python -m tests.integration.chaos``
(``make chaos``). The integration tests call ``run_chaos`` with the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.harness import (
    WorkerProcess,
    free_port,
    make_events,
    write_config,
)
from tests.kafka_fixtures import consume, decode_values, produce, unique, wait_for_topics
from worker.config import load_config
from worker.decode import Decoder
from worker.events import FinishedRequest
from worker.fusion import Fuser


@dataclass
class ChaosReport:
    requests: int
    kills: int
    results: int
    lost: int
    duplicates: int
    mismatched: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.requests} requests, {self.kills} kill -9 + restart: {self.results} results, "
            f"{self.lost} lost, {self.duplicates} duplicates, {self.mismatched} values differing "
            f"from an uninterrupted run ({self.seconds:.1f} s)"
        )


def reference(config: Path, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What an uninterrupted run gives: every request complete, fused by the engine."""
    cfg = load_config(config, env={})
    decoder = Decoder(cfg)
    members: dict[str, dict[str, Any]] = {}
    for e in events:
        ev = decoder.decode(orjson.dumps(e), None)
        members.setdefault(ev.request_id, {}).setdefault(ev.model, ev)
    finished = [
        FinishedRequest(rid, m, min(x.ts for x in m.values()), 0, 0, expired=False)
        for rid, m in members.items()
    ]
    return {r["request_id"]: r for r in Fuser(cfg).fuse(finished)}


def compare(
    results: list[dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> tuple[int, int, int]:
    """(lost, duplicates, mismatched) of ``results`` against ``expected``."""
    ids = Counter(r["request_id"] for r in results)
    lost = len(set(expected) - set(ids))
    duplicates = sum(n - 1 for n in ids.values())
    mismatched = 0
    for r in results:
        want = expected.get(r["request_id"])
        if (
            want is None
            or r["status"] != want["status"]
            or r["label"] != want["label"]
            or not all(
                math.isclose(a, b, abs_tol=1e-12)
                for a, b in zip(r["probs"], want["probs"], strict=True)
            )
        ):
            mismatched += 1
    return lost, duplicates, mismatched


async def create_topics(bootstrap: str, partitions: int) -> tuple[str, str, str]:
    names = (unique("chaos-in"), unique("chaos-out"), unique("chaos-dlq"))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        await wait_for_topics(admin, list(names))
    finally:
        await admin.close()
    return names


async def run_chaos(
    bootstrap: str,
    workdir: Path,
    requests: int = 20_000,
    kills: int = 5,
    partitions: int = 4,
    seed: int = 11,
) -> ChaosReport:
    started = time.monotonic()
    rng = random.Random(seed)
    inp, out, dlq = await create_topics(bootstrap, partitions)
    port = free_port()
    config = write_config(
        workdir / "chaos.toml",
        bootstrap=bootstrap,
        inputs=[inp],
        output=out,
        dlq=dlq,
        group=unique("chaos"),
        metrics_port=port,
        kafka={"delivery": "exactly-once"},
        # Long enough that no request turns partial while the worker is down.
        join={"timeout_ms": 60_000},
    )
    events = make_events(requests, seed=seed)
    records = [(e["request_id"].encode(), orjson.dumps(e)) for e in events]
    worker = WorkerProcess(config, port, workdir / "chaos-worker.log").start()
    worker.wait_ready()

    async def stream() -> None:
        # About ten seconds of stream, in slices, so the kills land mid-stream.
        step = max(1, len(records) // 40)
        for i in range(0, len(records), step):
            await produce(bootstrap, inp, records[i : i + step])
            await asyncio.sleep(0.25)

    producing = asyncio.create_task(stream())
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        worker.kill()
        worker = WorkerProcess(config, port, workdir / "chaos-worker.log").start()
        worker.wait_ready()
    await producing
    results = decode_values(
        await consume(
            bootstrap, out, requests, timeout_s=180, isolation_level="read_committed", idle_s=5
        )
    )
    worker.stop_quietly()
    lost, duplicates, mismatched = compare(results, reference(config, events))
    return ChaosReport(
        requests, kills, len(results), lost, duplicates, mismatched, time.monotonic() - started
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(run_chaos(args.bootstrap, Path(tmp), args.requests, args.kills))
    print(report)
    raise SystemExit(0 if report.lost == report.duplicates == report.mismatched == 0 else 1)


if __name__ == "__main__":
    main()
