"""Memory per pending request.

1. A worker process (at-least-once) with N requests pending that never complete: two
   of the three models report, ``timeout_ms`` is an hour, ``max_pending`` above N.
   Bytes per pending request = (RSS once all N are pending - RSS when it was ready and
   idle) / N: the join's state with its events, the offsets it tracks for the commit,
   and whatever the allocator keeps around them (what an operator sizes a pod by).
2. For comparison, the JoinTable alone in this process, no Kafka: the same events
   decoded from the same bytes and added as the worker adds them; tracemalloc counts
   the bytes Python allocated for the table and its events (allocator overhead and
   fragmentation excluded).
3. On request (``--breakdown N``), where the bytes of 2. go: the table's objects by kind
   (events, their strings, ints and probs, the pending entries, the dict, the offset and
   deadline bookkeeping), each object once, at the size the allocator gives it (pymalloc
   rounds up to 16 bytes). The worker's RSS adds what the allocators keep besides.

Run alone: ``python -m bench.memory [--pending N] [--traced N] [--breakdown N]``
(``--pending 0``: no worker, no broker).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass

from bench import kit, procs
from worker.config import build_config
from worker.decode import Decoder
from worker.join import JoinTable

TIMEOUT_MS = 3_600_000


@dataclass
class Memory:
    pending: int
    rss_before: int
    rss_after: int
    seconds: float

    @property
    def per_request(self) -> float:
        return (self.rss_after - self.rss_before) / self.pending


async def worker_rss(bootstrap: str, pending: int, partitions: int) -> Memory:
    name = kit.unique("mem")
    topics = (f"{name}-in", f"{name}-out", f"{name}-dlq")
    join = {"timeout_ms": TIMEOUT_MS, "max_pending": pending + 10_000}
    async with (
        kit.topics(bootstrap, dict.fromkeys(topics, partitions)),
        procs.running_worker(bootstrap, topics, kit.unique("group-mem"), join=join) as worker,
    ):
        proc, port = worker
        await asyncio.sleep(2.0)
        before = proc.rss_bytes()
        start = time.monotonic()
        events = kit.events(pending, name, kit.MODELS[:2])
        await kit.load(bootstrap, topics[0], partitions, events)
        await _until_pending(proc, port, pending, start)
        seconds = time.monotonic() - start
        # Let the last fetch buffers go and the collector run its course.
        await asyncio.sleep(3.0)
        after = proc.rss_bytes()
    return Memory(pending, before, after, seconds)


async def _until_pending(proc: procs.Process, port: int, pending: int, start: float) -> None:
    """Until the worker's gauge shows ``pending`` requests (at most 600 s after ``start``)."""
    while await asyncio.to_thread(procs.metric, port, "fusion_pending_requests") != pending:
        if not proc.alive() or time.monotonic() - start > 600:
            raise RuntimeError(f"never {pending} pending:\n{proc.tail()}")
        await asyncio.sleep(0.5)


def _decoder() -> Decoder:
    cfg = build_config(
        {
            "models": [{"name": m} for m in kit.MODELS],
            "fusion": {"labels": list(kit.LABELS)},
        }
    )
    return Decoder(cfg)


def table_traced(requests: int) -> tuple[float, float]:
    """(bytes per pending request for the table and its events, for the events alone)
    as tracemalloc counts them, two events per request."""
    decoder = _decoder()
    values = [v for _, v in kit.events(requests, "trace", kit.MODELS[:2])]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    events = [decoder.decode(v, None) for v in values]
    event_bytes = tracemalloc.get_traced_memory()[0] - base - 8 * len(events)  # the list
    table = JoinTable(kit.MODELS, TIMEOUT_MS, 5 * TIMEOUT_MS, 100_000)
    before = tracemalloc.get_traced_memory()[0]
    now = int(time.time() * 1000)
    for offset, ev in enumerate(events):
        table.add(ev, now, "predictions", offset)
    table_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table) == requests
    return (event_bytes + table_bytes) / requests, event_bytes / requests


def breakdown(requests: int) -> dict[str, float]:
    """Bytes per pending request by kind of object, allocator-rounded, each object
    counted once (a string shared by two events, an int shared by two slots), for a
    table of ``requests`` requests with two of three events each, as the worker adds
    them (the events of one 500-record batch share a ``now_ms``)."""
    decoder = _decoder()
    table = JoinTable(kit.MODELS, TIMEOUT_MS, 5 * TIMEOUT_MS, 100_000)
    start = now = int(time.time() * 1000)
    for offset, (_, value) in enumerate(kit.events(requests, kit.unique("mem"), kit.MODELS[:2])):
        if offset % 500 == 0:  # the worker's clock: one int object per step
            now = start + offset // 500
        table.add(decoder.decode(value, None), now, "predictions", offset)
    seen: set[int] = set()
    sizes: Counter[str] = Counter()

    def count(kind: str, obj: object) -> None:
        if obj is not None and id(obj) not in seen:
            seen.add(id(obj))
            n = sys.getsizeof(obj)
            sizes[kind] += -(-n // 16) * 16 if n <= 512 else n + 16

    count("pending dict", table._pending)
    for rid, p in table._pending.items():
        count("request_id", rid)
        count("pending entry (_Pending)", p)
        # A deadline is derived from the opening time (one int per step, as that time).
        for mark in (p.low, p.gap, p.opened_ms):
            count("offset and time ints", mark)
        for ev in p[:-1]:  # the last item is the opening time
            if ev is not None:
                count("event structs", ev)
                count("probs bytes", ev.probs)
                count("ts ints", ev.ts)
                count("trace_id", ev.trace_id)
                count("model_version", ev.model_version)
                count("request_id", ev.request_id)
    for source in table._offsets._sources.values():
        count("offset marks (arrays)", source.offsets)
        count("offset marks (arrays)", source.rids)
    deadlines = table._deadlines
    count("deadline buckets", deadlines._buckets)
    for bucket in deadlines._buckets.values():
        if isinstance(bucket, list):
            count("deadline buckets", bucket)
    return {kind: n / requests for kind, n in sizes.most_common()}


def show(m: Memory | None, traced: tuple[float, float] | None, traced_n: int) -> str:
    lines = []
    if m is not None:
        lines.append(
            f"worker RSS {m.rss_before / 2**20:.0f} MiB idle -> {m.rss_after / 2**20:.0f} MiB "
            f"with {m.pending:,} pending requests (2 of 3 events each; reached in "
            f"{m.seconds:.0f}s): {m.per_request:.0f} bytes per pending request"
        )
    if traced is not None:
        lines.append(
            f"JoinTable alone (tracemalloc, {traced_n:,} pending): {traced[0]:.0f} bytes per "
            f"pending request, of which the two decoded events {traced[1]:.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="Memory per pending request.")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--pending", type=int, default=1_000_000)
    p.add_argument("--traced", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--breakdown", type=int, default=0, help="pending requests; 0: skip")
    args = p.parse_args()
    m = None
    if args.pending:
        m = asyncio.run(worker_rss(args.bootstrap, args.pending, args.partitions))
    print(show(m, table_traced(args.traced), args.traced), flush=True)
    if args.breakdown:
        parts = breakdown(args.breakdown)
        print(f"JoinTable objects ({args.breakdown:,} pending), allocator-rounded:")
        for kind, n in parts.items():
            print(f"  {kind:26s} {n:6.1f} bytes per pending request")
        print(f"  {'total':26s} {sum(parts.values()):6.1f}", flush=True)


if __name__ == "__main__":
    main()
