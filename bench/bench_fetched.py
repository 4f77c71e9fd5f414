"""The live engine step over fetched bytes, no broker: the records as aiokafka's parser
hands them over (``list(batch)``, what ``raw_records.BatchPartitionRecords`` takes)
against the compiled parser's runs (``native.Fetched``, read in place by the decoder and
the join).

The throughput benchmark's events (``--requests`` requests x 3 models) are put on 4
partitions by their key, as the producer's partitioner would, and written as v2 record
batches of 500 records, fetches of 5,000 records a partition. Each round parses every
fetch and runs ``Engine.step_runs`` over it (a live engine without result dicts, as the
worker's), the two ways in alternating order, with the worker's garbage-collector
settings. Prints the process CPU time per event of each round and the medians.

``python -m bench.bench_fetched [--requests N] [--rounds N]``
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import struct
import time
from collections.abc import Sequence
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from bench import kit
from worker import native
from worker.config import build_config
from worker.engine import Engine
from worker.fusion import Fuser
from worker.murmur2 import partition_for
from worker.runtime.main import tune_gc

PARTITIONS = 4
BATCH = 500
FETCH = 5000


def fetches(requests: int) -> list[tuple[int, bytes]]:
    """(partition, fetched bytes) in the order a consumer would get them: a fetch of
    each partition in turn."""
    per: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    for key, value in kit.events(requests, "fetched"):
        per[partition_for(key, PARTITIONS)].append((key, value))
    by_partition = []
    for p, records in per.items():
        out = []
        for start in range(0, len(records), FETCH):
            batches = [
                record_batch([(kit.TS0, k, v) for k, v in records[base : base + BATCH]], base)
                for base in range(start, min(start + FETCH, len(records)), BATCH)
            ]
            out.append((p, b"".join(batches)))
        by_partition.append(out)
    return [f for turn in itertools.zip_longest(*by_partition) for f in turn if f is not None]


def record_batch(records: Sequence[tuple[int, bytes, bytes]], base_offset: int) -> bytes:
    """One v2 record batch of (timestamp ms, key, value) records at ``base_offset``, as
    a fetch carries it."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 24)
    for delta, (ts, key, value) in enumerate(records):
        builder.append(delta, ts, key, value, [])
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base_offset)  # outside what the CRC covers
    return bytes(data)


def aiokafkas(data: bytes) -> list[Any]:
    records = MemoryRecords(data)
    taken: list[Any] = []
    while records.has_next():
        batch = records.next_batch()
        if not batch.validate_crc():
            raise SystemExit("corrupt batch")
        taken += list(batch)
    return taken


def compiled(data: bytes) -> Any:
    fetched = native.Fetched.parse(data, 0, True)
    if fetched is None:
        raise SystemExit("the compiled parser did not take a fetch")
    return fetched.take(None)[0]


# One step's input: (the step's clock in ms, [(partition, fetched bytes)]).
Step = tuple[int, list[tuple[int, bytes]]]


def one_round(config: Any, steps: Sequence[Step], parse: Any, events: int) -> float:
    """CPU seconds per event for parsing (``parse``) and stepping over every fetch of
    ``steps`` once, then closing what is left."""
    engine = Engine(config, Fuser(config), results=False)
    for p in range(PARTITIONS):
        engine.open(p)
    start = time.process_time()
    for now, fetched in steps:
        engine.step_runs([(("in", p), parse(data)) for p, data in fetched], now)
    engine.step_runs([], steps[-1][0] + 10**9 if steps else 0)  # what is left closes
    return (time.process_time() - start) / events


def soft_vote_config() -> Any:
    """The benchmarks' weighted soft vote over ``kit``'s models and labels; exits when the
    compiled extension these benchmarks measure is not built."""
    if native.Fetched is None:
        raise SystemExit("the compiled extension is not built (make .venv)")
    return build_config(
        {
            "fusion": {"strategy": "soft_vote", "labels": list(kit.LABELS)},
            "models": [{"name": m} for m in kit.MODELS],
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    config = soft_vote_config()
    data = [(now, [fetch]) for now, fetch in enumerate(fetches(args.requests))]
    events = args.requests * len(kit.MODELS)
    tune_gc()
    ways = {"aiokafka's records": aiokafkas, "compiled runs": compiled}
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for n in range(args.rounds):
        order = list(ways) if n % 2 == 0 else list(reversed(ways))
        for name in order:
            us = one_round(config, data, ways[name], events) * 1e6
            figures[name].append(us)
            print(f"{name:>18}: {us:.2f} us CPU per event")
    medians = {name: statistics.median(v) for name, v in figures.items()}
    print(
        f"{events:,} events, medians: "
        + ", ".join(f"{name} {us:.2f} us" for name, us in medians.items())
    )


if __name__ == "__main__":
    main()
