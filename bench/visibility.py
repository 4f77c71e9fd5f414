"""Exactly-once on a sparse stream: how long from a request's last event until its result
is readable to a read_committed consumer.

Under exactly-once a result is readable only once its transaction commits, so this is
the latency a downstream consumer sees, commit included (``bench.latency`` times the
fused record's own timestamp, which is before the commit). One request every ``--gap-ms``,
its three events sent together; a fresh exactly-once worker with the default intervals.
Both times are taken in this process (monotonic clock): after the last event's
acknowledgement, and when the reader (fetch wait 10 ms) receives the result.

    python -m bench.visibility [--bootstrap HOST:PORT] [--requests N] [--gap-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench import kit, procs
from bench.latency import percentiles

PROBS = [0.2, 0.3, 0.5]


async def read(consumer: AIOKafkaConsumer, expected: int, seen: dict[str, float]) -> None:
    """Note when each result key is first received until ``expected`` keys are seen."""
    while len(seen) < expected:
        batch = await consumer.getmany(timeout_ms=100)
        now = time.monotonic()
        for records in batch.values():
            for r in records:
                seen.setdefault(r.key.decode(), now)


async def run(bootstrap: str, requests: int, gap_ms: float) -> dict[str, float]:
    """Publish ``requests`` requests ``gap_ms`` apart; the readable-after-last-event
    percentiles in ms."""
    name = kit.unique("vis")
    topics = (f"{name}-in", f"{name}-out", f"{name}-dlq")
    inp, out, dlq = topics
    group = kit.unique("group-vis")
    kafka = procs.worker_sections(bootstrap, [inp], out, dlq, group, 0, "exactly-once")["kafka"]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    async with (
        kit.topics(bootstrap, dict.fromkeys(topics, 4)),
        procs.running_worker(bootstrap, topics, group, kafka=kafka),
    ):
        # read_committed from the start; a short fetch wait: the reader's own delay
        # is not the worker's.
        consumer = kit.reader(bootstrap, fetch_max_wait_ms=10)
        await consumer.start()
        consumer.assign(await kit.partitions(consumer, out))
        reader = asyncio.create_task(read(consumer, requests, seen))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            for i in range(requests):
                rid = kit.request_id(name, i)
                ts = int(time.time() * 1000)
                acks = [
                    await producer.send(inp, kit.event_value(rid, m, ts, PROBS), key=rid.encode())
                    for m in kit.MODELS
                ]
                await asyncio.gather(*acks)
                sent[rid] = time.monotonic()
                await asyncio.sleep(gap_ms / 1000)
            await asyncio.wait_for(reader, timeout=60)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await producer.stop()
            await consumer.stop()
    return percentiles([(seen[rid] - t) * 1000 for rid, t in sent.items()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--gap-ms", type=float, default=60.0, help="between two requests")
    args = p.parse_args()
    figures = asyncio.run(run(args.bootstrap, args.requests, args.gap_ms))
    shown = " / ".join(f"{v:.0f}" for v in figures.values())
    print(
        f"exactly-once, one request every {args.gap_ms:.0f} ms, {args.requests} requests: "
        f"last event -> readable (read_committed), {' / '.join(figures)} ms: {shown}"
    )


if __name__ == "__main__":
    main()
