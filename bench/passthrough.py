"""The passthrough baseline: the worker's client stack with nothing in between.

A consumer in a fresh group (range assignor, manual commits, the worker's fetch sizes)
reads the input topics and, for every ``--every``-th record of a partition, produces
that record's key and value to the output topic: one output per request, no decoding,
no join, no fusion. Every second it waits for the outputs and commits, as the worker
does. What it reaches is the practical ceiling of the worker on this machine.

``--send record`` queues each output with ``producer.send`` (one coroutine and one
future per record, the plain aiokafka way); ``--send batch`` fills one batch per
partition with ``create_batch``/``send_batch`` (as the worker's sink does).

Run: ``python -m bench.passthrough --bootstrap B --input T --output O --group G``;
stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from bench.kit import BatchWriter


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        *args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        partition_assignment_strategy=(RangePartitionAssignor,),
        max_poll_records=10_000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    await consumer.start()
    partitions = len(await producer.partitions_for(args.output))
    writer = BatchWriter(producer, args.output, partitions)
    futures: list[asyncio.Future[Any]] = []
    seen: dict[int, int] = {}
    next_commit = time.monotonic() + 1.0
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            for tp, records in batch.items():
                n = seen.get(tp.partition, 0)
                for r in records:
                    n += 1
                    if n % args.every == 0:
                        if args.send == "batch":
                            await writer.add(r.key, r.value)
                        else:
                            futures.append(await producer.send(args.output, r.value, key=r.key))
                seen[tp.partition] = n
            await writer.send_pending()
            if time.monotonic() >= next_commit:
                await writer.flush()
                await asyncio.gather(*futures)
                futures.clear()
                await consumer.commit()
                next_commit = time.monotonic() + 1.0
    finally:
        await writer.flush()
        await asyncio.gather(*futures)
        await consumer.stop()
        await producer.stop()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", nargs="+", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--every", type=int, default=3, help="one output per this many records")
    p.add_argument("--send", choices=("record", "batch"), default="record")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
