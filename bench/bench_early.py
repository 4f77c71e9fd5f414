"""Early decision on the real broker: one slow model answers 100-300 ms after the two
others; how long from a request's first event to its fused result, with and without
``[join] early_decision``, how many requests are decided early, and whether a decided
label ever differs from the complete fusion's.

The same planned requests are published twice, at the same pace, to fresh topics, each
time with a fresh at-least-once worker (soft_vote, weights 0.3 / 0.4 / 0.3, the slow
model is distilbert, weight 0.3). Per request a true label; each member is peaked on it
(most of the time) or on another label, as members of a real ensemble are. Every event
carries the wall-clock time it is handed to the producer as its record timestamp, and
the figure is the fused record's timestamp minus the request's first event's (as
``bench.latency``). The complete fusion is computed offline by the Fuser from the very
events published (decoded by the worker's Decoder), and every result's label of both
runs is compared with it.

    python -m bench.bench_early [--bootstrap HOST:PORT] [--rate REQUESTS_PER_S] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from bench import kit, procs
from bench.latency import percentiles
from worker.config import Config, load_config
from worker.decode import Decoder
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser

# Per model (kit.MODELS order): the range (ms) of its delay after the request starts.
DELAYS_MS = ((0.0, 10.0), (0.0, 20.0), (100.0, 300.0))
SLOW = kit.MODELS[2]
ACCURACY = 0.85  # how often a member is peaked on the true label
TICK_S = 0.002


@dataclass(frozen=True, slots=True)
class Planned:
    """One request: its members' probabilities (k,) and delays after its start (ms)."""

    request_id: str
    probs: tuple[list[float], ...]
    delays_ms: tuple[float, ...]


@dataclass
class Run:
    early: bool
    requests: int  # measured, after the warm-up
    first_to_fused: dict[str, float]
    statuses: dict[str, int]
    label_differences: int  # results whose label is not the complete fusion's
    missing: int  # requests without a result


def plan(n: int, run: str, seed: int = 5) -> list[Planned]:
    rng = np.random.default_rng(seed)
    k = len(kit.LABELS)
    out: list[Planned] = []
    for i in range(n):
        y = int(rng.integers(k))
        rows = []
        for _ in kit.MODELS:
            hot = y if rng.random() < ACCURACY else int(rng.integers(k))
            p = rng.dirichlet(np.ones(k) + 6.0 * np.eye(k)[hot]).round(6)
            p[-1] = round(1.0 - float(p[:-1].sum()), 6)
            rows.append(np.abs(p).tolist())
        delays = tuple(float(rng.uniform(lo, hi)) for lo, hi in DELAYS_MS)
        out.append(Planned(kit.request_id(run, i), tuple(rows), delays))
    return out


async def publish(
    bootstrap: str, topic: str, partitions: int, requests: list[Planned], rate: float
) -> tuple[dict[str, int], list[tuple[bytes, int]], float]:
    """Publish ``requests`` at ``rate`` requests/s, each member at its delay. Returns
    {request_id: first record timestamp}, every (value, record timestamp) sent, and the
    start time (s)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    writer = kit.BatchWriter(producer, topic, partitions)
    due: list[tuple[float, int, int, int]] = []  # (time, seq, request index, model index)
    first: dict[str, int] = {}
    sent: list[tuple[bytes, int]] = []
    started = time.time()
    opened = seq = 0
    try:
        while opened < len(requests) or due:
            now = time.time()
            while opened < len(requests) and opened <= rate * (now - started):
                start = started + opened / rate
                for m, delay in enumerate(requests[opened].delays_ms):
                    seq += 1
                    heapq.heappush(due, (start + delay / 1000, seq, opened, m))
                opened += 1
            while due and due[0][0] <= now:
                _, _, i, m = heapq.heappop(due)
                req = requests[i]
                ts = int(time.time() * 1000)
                value = orjson.dumps(
                    {
                        "request_id": req.request_id,
                        "model": kit.MODELS[m],
                        "ts": ts,
                        "probs": req.probs[m],
                    }
                )
                await writer.add(req.request_id.encode(), value, timestamp_ms=ts)
                first.setdefault(req.request_id, ts)
                sent.append((value, ts))
            await writer.send_pending()
            await asyncio.sleep(TICK_S)
        await writer.flush()
    finally:
        await producer.stop()
    return first, sent, started


async def read_results(bootstrap: str, topic: str, idle_s: float = 1.0) -> dict[str, Any]:
    """request_id -> (record timestamp, label, status) of each result (the first one)."""
    out: dict[str, Any] = {}
    async for r in kit.read_all(bootstrap, topic, idle_s):
        doc = orjson.loads(r.value)
        out.setdefault(doc["request_id"], (r.timestamp, doc["label"], doc["status"]))
    return out


def complete_labels(config: Config, sent: list[tuple[bytes, int]]) -> dict[str, str]:
    """The label of the complete fusion of every request, from the events as published,
    decoded as the worker decodes them."""
    decoder = Decoder(config)
    members: dict[str, dict[str, PredictionEvent]] = {}
    for value, ts in sent:
        ev = decoder.decode(value, ts)
        members.setdefault(ev.request_id, {})[ev.model] = ev
    finished = [FinishedRequest(rid, m, 0, 0, 0, False) for rid, m in members.items()]
    return {r["request_id"]: r["label"] for r in Fuser(config).fuse(finished)}


async def one_run(
    bootstrap: str, early: bool, requests: list[Planned], rate: float, partitions: int
) -> tuple[dict[str, int], list[tuple[bytes, int]], float, dict[str, Any], Config]:
    name = kit.unique("early" if early else "wait")
    topics = (f"{name}-in", f"{name}-out", f"{name}-dlq")
    async with kit.topics(bootstrap, dict.fromkeys(topics, partitions)):
        with tempfile.TemporaryDirectory(prefix="bench-early-") as tmp:
            port = procs.free_port()
            sections = procs.worker_sections(
                bootstrap, [topics[0]], topics[1], topics[2], kit.unique("group"), port
            )
            sections["join"] = {"early_decision": early}
            path = procs.write_config(Path(tmp) / "worker.toml", sections)
            config = load_config(path)
            worker = procs.Process(
                ["-m", "worker.cli", "run", "--config", str(path)], Path(tmp) / "worker.log"
            ).start()
            try:
                await procs.wait_ready(port, worker)
                first, sent, started = await publish(
                    bootstrap, topics[0], partitions, requests, rate
                )
                filled = await kit.wait_filled(bootstrap, topics[1], len(requests), 60)
                if filled.done is None:
                    print(f"only {filled.end} of {len(requests)} results arrived")
            finally:
                worker.stop()
        results = await read_results(bootstrap, topics[1])
    return first, sent, started, results, config


def figures(
    early: bool,
    first: dict[str, int],
    results: dict[str, Any],
    complete: dict[str, str],
    since_ms: float,
) -> Run:
    measured = [rid for rid, ts in first.items() if ts >= since_ms]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    missing = differences = 0
    for rid in measured:
        got = results.get(rid)
        if got is None:
            missing += 1
            continue
        ts, label, status = got
        latencies.append(ts - first[rid])
        statuses[status] = statuses.get(status, 0) + 1
    for rid, (_, label, _) in results.items():
        differences += label != complete[rid]
    return Run(early, len(measured), percentiles(latencies), statuses, differences, missing)


async def run(
    bootstrap: str, rate: float, seconds: float, partitions: int, warmup_s: float = 3.0
) -> list[Run]:
    requests = plan(int(rate * seconds), kit.unique("req"))
    out: list[Run] = []
    for early in (False, True):
        first, sent, started, results, config = await one_run(
            bootstrap, early, requests, rate, partitions
        )
        complete = complete_labels(config, sent)
        out.append(figures(early, first, results, complete, (started + warmup_s) * 1000))
    return out


def show(runs: list[Run], rate: float) -> str:
    lines = [
        f"early decision at {rate:g} requests/s (3 events each; {SLOW} answers 100-300 ms "
        "after the others); first event -> fused, ms:"
    ]
    for r in runs:
        p = r.first_to_fused
        decided = r.statuses.get("decided", 0)
        answered = sum(r.statuses.values())
        lines.append(
            f"  early_decision = {str(r.early).lower():5}  p50 {p['p50']:6.1f}  "
            f"p99 {p['p99']:6.1f}  max {p['max']:6.1f}  decided {decided}/{answered} "
            f"({decided / max(answered, 1):.1%})  statuses {r.statuses}  "
            f"label differences from the complete fusion: {r.label_differences}  "
            f"without a result: {r.missing}  ({r.requests} requests after the warm-up)"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args()
    runs = asyncio.run(run(args.bootstrap, args.rate, args.seconds, args.partitions))
    print(show(runs, args.rate))


if __name__ == "__main__":
    main()
