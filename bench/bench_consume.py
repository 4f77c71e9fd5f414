"""The input consumer's CPU per record: aiokafka's ``ConsumerRecord``s against the parsed
records the worker takes (worker/runtime/raw_records.py): the compiled parser's runs
where the extension is there, else aiokafka's parsed records.

Loads ``--requests`` requests x 3 models of the throughput benchmark's events into a
fresh 4-partition topic, then reads the whole topic ``--repeat`` times each way, in
alternating order, with the worker's garbage-collector settings (``tune_gc``), touching
what the engine reads in Python: each record's offset and value, or of a run only its
length and last offset (the decoder and the join read the rest in place). Prints the
process CPU time per record of each read and the medians.

``python -m bench.bench_consume [--bootstrap HOST:PORT] [--requests N] [--repeat N]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka import AIOKafkaConsumer

from bench import kit
from worker import native
from worker.runtime.main import tune_gc
from worker.runtime.raw_records import install

PARTITIONS = 4


async def read(bootstrap: str, topic: str, expected: int, raw: bool) -> float:
    """CPU seconds per record for reading the whole topic once."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        if raw and not install(consumer):
            raise SystemExit("the parsed records could not be installed on this aiokafka")
        consumer.assign(await kit.partitions(consumer, topic))
        seen = 0
        start = time.process_time()
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                if type(records) is native.Run:
                    records[-1].offset  # noqa: B018  # the step's position
                else:
                    for r in records:
                        r.offset, r.value  # noqa: B018  # what the engine reads of each
                seen += len(records)
        return (time.process_time() - start) / seen
    finally:
        await consumer.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tune_gc()
    run = kit.unique("consume")
    async with kit.topics(args.bootstrap, {run: PARTITIONS}) as (topic,):
        count, _ = await kit.load(args.bootstrap, topic, PARTITIONS, kit.events(args.requests, run))
        figures: dict[str, list[float]] = {"ConsumerRecord": [], "parsed": []}
        for n in range(args.repeat):
            order = [False, True] if n % 2 == 0 else [True, False]
            for raw in order:
                us = await read(args.bootstrap, topic, count, raw) * 1e6
                name = "parsed" if raw else "ConsumerRecord"
                figures[name].append(us)
                print(f"{name:>14}: {us:.2f} us CPU per record")
    medians = {name: statistics.median(v) for name, v in figures.items()}
    print(
        f"{count:,} records, medians: ConsumerRecord {medians['ConsumerRecord']:.2f} us, "
        f"parsed {medians['parsed']:.2f} us per record"
    )


if __name__ == "__main__":
    asyncio.run(main())
