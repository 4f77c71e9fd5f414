"""The engine step over the live load's input, no broker: what a record costs the
decoder, the join and the fusion when the events come as the latency benchmark
publishes them, against the same events with each request's members side by side.

The latency benchmark's generator (``latency.prepare``, at ``--rate`` events/s for
``--seconds``) publishes each event when it is due: a request's three members reach a
partition up to 40 ms apart, among a thousand or so other events, in one record batch
per partition per 2 ms tick. Here those events are written as the fetches the worker
would get if it took a step every ``--windows`` ms (each window's batches of a
partition in one fetch) and run through ``Engine.step_runs`` (the compiled parser's
runs, as the worker's), every input and window in each round in alternating order,
with the worker's garbage-collector settings. ``adjacent`` is the same events of each
partition sorted by request id, so that a request closes on the event after its first:
fewer requests open at once, nothing else different. Prints the process CPU time per
event of each round and the medians.

``python -m bench.bench_step_input [--rate R] [--seconds S] [--windows 2,5,40] [--rounds N]``
"""

from __future__ import annotations

import argparse
import statistics

from bench import latency
from bench.bench_fetched import (
    PARTITIONS,
    Step,
    compiled,
    one_round,
    record_batch,
    soft_vote_config,
)
from worker.runtime.main import tune_gc

# The record timestamps' origin (ms): any wall-clock-like value.
T0 = 1_700_000_000_000
TICK_MS = round(latency.TICK_S * 1000)

# A partition's events: (record timestamp ms, key, value), in the order published.
Records = list[tuple[int, bytes, bytes]]


def live_records(rate: float, seconds: float) -> list[Records]:
    """Per partition, the latency benchmark's events in the order it publishes them,
    each stamped with its due time (the generator's ts and record timestamp)."""
    plan = latency.prepare("in", PARTITIONS, rate, seconds, "steps")
    parts: list[Records] = []
    for p in range(plan.partitions):
        records: Records = []
        for place, key, head, tail in zip(
            plan.places[p], plan.keys[p], plan.heads[p], plan.tails[p], strict=True
        ):
            ts = T0 + int(plan.due[place] * 1000)
            records.append((ts, key, head + b"%d" % ts + tail))
        parts.append(records)
    return parts


def adjacent(parts: list[Records]) -> list[Records]:
    """The same events with each request's members side by side (sorted by request id),
    spread evenly over the same span of time."""
    out: list[Records] = []
    for records in parts:
        if not records:
            out.append([])
            continue
        first, last = records[0][0], records[-1][0]
        ordered = sorted(records, key=lambda r: (r[1], r[0]))
        span = (last - first) / len(ordered)
        out.append([(first + int(i * span), k, v) for i, (_, k, v) in enumerate(ordered)])
    return out


def steps(parts: list[Records], window_ms: int, tick_ms: int = TICK_MS) -> list[Step]:
    """The fetches of a worker stepping every ``window_ms``: per window and partition,
    one batch per tick of the records stamped in it, joined as one fetch."""
    if not any(parts):
        return []
    start = min(r[0][0] for r in parts if r)
    end = max(r[-1][0] for r in parts if r)
    taken = [0] * len(parts)
    out: list[Step] = []
    window = start
    while window <= end:
        window += window_ms
        fetched = []
        for p, records in enumerate(parts):
            batches = []
            tick = window - window_ms
            while tick < window:
                tick = min(tick + tick_ms, window)
                hi = taken[p]
                while hi < len(records) and records[hi][0] < tick:
                    hi += 1
                if hi > taken[p]:
                    batches.append(record_batch(records[taken[p] : hi], taken[p]))
                    taken[p] = hi
            if batches:
                fetched.append((p, b"".join(batches)))
        out.append((window, fetched))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=110_000.0, help="events/s published")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--windows", default="5,40", help="ms between steps, comma separated")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    config = soft_vote_config()
    live = live_records(args.rate, args.seconds)
    inputs = {"live": live, "adjacent": adjacent(live)}
    events = sum(len(r) for r in live)
    windows = [int(w) for w in args.windows.split(",")]
    data = {(name, w): steps(parts, w) for w in windows for name, parts in inputs.items()}
    tune_gc()
    # Every input and window in each round, the order reversed every other round: the
    # machine's speed drifts over minutes, and this keeps the drift out of the ratios.
    figures: dict[tuple[str, int], list[float]] = {key: [] for key in data}
    for n in range(args.rounds):
        for key in list(data) if n % 2 == 0 else list(reversed(data)):
            figures[key].append(one_round(config, data[key], compiled, events) * 1e6)
    for w in windows:
        print(f"steps every {w} ms ({events / max(1, len(data['live', w])):,.0f} events a step)")
        for name in inputs:
            v = figures[name, w]
            rounds = " ".join(f"{us:.2f}" for us in v)
            print(f"  {name:>8}: {rounds}  median {statistics.median(v):.2f} us CPU per event")


if __name__ == "__main__":
    main()
