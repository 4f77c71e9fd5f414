"""The client kit's costs: the check before each publish, publishing throughput against a
plain aiokafka producer, and a gateway's round trip through a real worker.

    python -m bench.bench_client --bootstrap 127.0.0.1:9092 [--events 60000] [--requests 300]

Needs a running broker; every topic carries a fresh suffix and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
import orjson

from bench import kit, procs
from worker.client import FusedResults, PredictionPublisher, check_event


def check_cost(n: int) -> tuple[float, float]:
    """µs per event: check_event (validate + encode) and orjson.dumps alone."""
    rng = np.random.default_rng(1)
    docs = [
        {"request_id": f"r-{i:08d}", "model": kit.MODELS[i % 3], "probs": p, "labels": kit.LABELS}
        for i, p in enumerate(rng.dirichlet(np.ones(3), n).tolist())
    ]
    t0 = time.perf_counter()
    for d in docs:
        check_event(d)
    checked = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in docs:
        orjson.dumps(d)
    dumped = time.perf_counter() - t0
    return checked / n * 1e6, dumped / n * 1e6


async def publish_rate(bootstrap: str, n: int) -> tuple[float, float]:
    """Events per second, first publish to last acknowledgement: PredictionPublisher
    (checks every event) and a plain aiokafka producer with the same settings sending
    values encoded beforehand."""
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), n).tolist()
    ids = [f"r-{i // 3:08d}" for i in range(n)]
    async with kit.topics(bootstrap, {kit.unique("client-a"): 4, kit.unique("client-b"): 4}) as (
        a,
        b,
    ):
        async with PredictionPublisher(bootstrap, a) as pub:
            t0 = time.perf_counter()
            for i in range(n):
                await pub.publish(ids[i], model=kit.MODELS[i % 3], probs=probs[i])
            await pub.flush()
            kit_rate = n / (time.perf_counter() - t0)
        from aiokafka import AIOKafkaProducer

        values = [
            orjson.dumps({"request_id": ids[i], "model": kit.MODELS[i % 3], "probs": probs[i]})
            for i in range(n)
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            t0 = time.perf_counter()
            for i in range(n):
                await producer.send(b, values[i], key=ids[i].encode())
            await producer.flush()
            raw_rate = n / (time.perf_counter() - t0)
        finally:
            await producer.stop()
    return kit_rate, raw_rate


async def round_trip(bootstrap: str, requests: int) -> tuple[list[float], float]:
    """Gateway latency in ms, one request at a time (publish the three models' events,
    await the fused result), and the time for ``requests`` requests all at once."""
    names = {kit.unique("in"): 4, kit.unique("out"): 4, kit.unique("dlq"): 4}
    async with kit.topics(bootstrap, names) as (inp, out, dlq):  # noqa: SIM117
        async with procs.running_worker(bootstrap, (inp, out, dlq), kit.unique("group")):
            async with (
                FusedResults(bootstrap, out) as results,
                PredictionPublisher(bootstrap, inp, linger_ms=0) as pub,
            ):
                latencies: list[float] = []
                for i in range(requests):
                    rid = f"seq-{i:06d}"
                    t0 = time.perf_counter()
                    for model in kit.MODELS:
                        await pub.publish(rid, model=model, probs=[0.2, 0.3, 0.5])
                    await pub.flush()
                    await results.get(rid, timeout_s=30)
                    latencies.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                rids = [f"par-{i:06d}" for i in range(requests)]
                waiting = [asyncio.create_task(results.get(r, timeout_s=60)) for r in rids]
                for rid in rids:
                    for model in kit.MODELS:
                        await pub.publish(rid, model=model, probs=[0.2, 0.3, 0.5])
                await asyncio.gather(*waiting)
                burst_s = time.perf_counter() - t0
    return latencies, burst_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    checked_us, dumped_us = check_cost(100_000)
    print(f"check_event: {checked_us:.2f} µs/event (orjson.dumps alone {dumped_us:.2f} µs)")
    kit_rate, raw_rate = await publish_rate(args.bootstrap, args.events)
    print(
        f"publish {args.events} events, 4 partitions: PredictionPublisher {kit_rate:,.0f}/s, "
        f"plain aiokafka producer {raw_rate:,.0f}/s ({kit_rate / raw_rate:.2f}x)"
    )
    latencies, burst_s = await round_trip(args.bootstrap, args.requests)
    q = statistics.quantiles(latencies, n=100)
    print(
        f"gateway round trip (3 models -> worker -> FusedResults), {args.requests} one at a "
        f"time: p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms"
    )
    print(f"{args.requests} requests at once: all answered in {burst_s:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
