"""Chaos for at-least-once: kill -9 the worker five times while a stream flows whose
requests' events are spread over about a second, restart it each time, then count what a
downstream consumer that upserts by request_id would see:

- lost: requests with no result at all;
- repeated: requests published more than once;
- degraded: requests with a later result worse than an earlier one (fewer members, or
  ``partial``/``insufficient`` after ``complete``), which an upserting consumer would keep.

At-least-once allows repeats; it must never lose a request nor publish a worse repeat.

Run by hand (the local broker must be up): ``python -m tests.integration.chaos_at_least_once``
(``make chaos-at-least-once``). The integration tests call ``run_chaos_at_least_once``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.integration.chaos import create_topics
from tests.integration.harness import WorkerProcess, free_port, make_events, write_config
from tests.kafka_fixtures import consume, decode_values, produce, unique

# How good a status is: a repeat must never rank lower than what was published before.
STATUS_RANK = {"complete": 3, "decided": 3, "partial": 2, "insufficient": 1}


@dataclass
class AtLeastOnceReport:
    requests: int
    kills: int
    results: int
    lost: int
    repeated: int
    degraded: int
    partial: int
    seconds: float

    def __str__(self) -> str:
        share = 100.0 * self.repeated / max(1, self.requests)
        return (
            f"{self.requests} requests, {self.kills} kill -9 + restart: {self.results} results; "
            f"lost {self.lost}, repeated {self.repeated} ({share:.2f} %), "
            f"degraded {self.degraded}; {self.partial} requests ever partial "
            f"({self.seconds:.1f} s)"
        )


def schedule(
    events: list[dict[str, Any]], duration_s: float, spread_s: float, seed: int
) -> list[tuple[float, bytes, bytes]]:
    """(send time, key, value) of every event, sorted: request i starts at
    ``i * duration_s / n`` and its other members follow within ``spread_s``."""
    rng = random.Random(seed)
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_request[e["request_id"]].append(e)
    step = duration_s / max(1, len(by_request))
    out: list[tuple[float, bytes, bytes]] = []
    for i, members in enumerate(by_request.values()):
        start = i * step
        offsets = [0.0, *sorted(rng.uniform(0, spread_s) for _ in members[1:])]
        rng.shuffle(members)
        for offset, e in zip(offsets, members, strict=True):
            out.append((start + offset, e["request_id"].encode(), orjson.dumps(e)))
    out.sort(key=lambda item: item[0])
    return out


def tally(results: list[dict[str, Any]], expected: set[str]) -> tuple[int, int, int, int]:
    """(lost, repeated, degraded, partial) of ``results`` in publication order."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        seen[r["request_id"]].append(r)
    lost = len(expected - set(seen))
    repeated = sum(1 for rs in seen.values() if len(rs) > 1)
    degraded = 0
    for rs in seen.values():
        best_rank, best_members = 0, 0
        for r in rs:
            rank, members = STATUS_RANK.get(r["status"], 0), len(r.get("members", {}))
            if rank < best_rank or members < best_members:
                degraded += 1
                break
            best_rank, best_members = max(best_rank, rank), max(best_members, members)
    partial = sum(1 for rs in seen.values() if any(r["status"] != "complete" for r in rs))
    return lost, repeated, degraded, partial


async def run_chaos_at_least_once(
    bootstrap: str,
    workdir: Path,
    requests: int = 20_000,
    kills: int = 5,
    partitions: int = 4,
    duration_s: float = 30.0,
    spread_s: float = 1.0,
    seed: int = 17,
) -> AtLeastOnceReport:
    started = time.monotonic()
    rng = random.Random(seed)
    inp, out, dlq = await create_topics(bootstrap, partitions)
    port = free_port()
    config = write_config(
        workdir / "chaos-alo.toml",
        bootstrap=bootstrap,
        inputs=[inp],
        output=out,
        dlq=dlq,
        group=unique("chaos-alo"),
        metrics_port=port,
        kafka={"delivery": "at-least-once", "commit_interval_ms": 1000},
        # Longer than a restart, so a request only turns partial by a wrong re-read.
        join={"timeout_ms": 10_000},
    )
    events = make_events(requests, seed=seed)
    plan = schedule(events, duration_s, spread_s, seed)
    log = workdir / "chaos-alo-worker.log"
    worker = WorkerProcess(config, port, log).start()
    worker.wait_ready()

    async def stream() -> None:
        # Send each event at its planned time, in 100 ms slices.
        t0 = time.monotonic()
        i = 0
        while i < len(plan):
            now = time.monotonic() - t0
            j = i
            while j < len(plan) and plan[j][0] <= now:
                j += 1
            if j > i:
                await produce(bootstrap, inp, [(k, v) for _, k, v in plan[i:j]])
                i = j
            await asyncio.sleep(0.1)

    producing = asyncio.create_task(stream())
    gap = duration_s / (kills + 1)
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.5 * gap, 1.2 * gap))
        worker.kill()
        worker = WorkerProcess(config, port, log).start()
        worker.wait_ready()
    await producing
    records = await consume(bootstrap, out, requests, timeout_s=180, idle_s=15)
    worker.stop_quietly()
    results = decode_values(records)
    lost, repeated, degraded, partial = tally(results, {e["request_id"] for e in events})
    return AtLeastOnceReport(
        requests,
        kills,
        len(results),
        lost,
        repeated,
        degraded,
        partial,
        time.monotonic() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = asyncio.run(
            run_chaos_at_least_once(
                args.bootstrap, Path(tmp), args.requests, args.kills, duration_s=args.duration_s
            )
        )
    print(report)
    raise SystemExit(0 if report.lost == report.degraded == 0 else 1)


if __name__ == "__main__":
    main()
