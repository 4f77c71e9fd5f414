"""JoinTable: events per CPU second through add+expire+drain (with the worker's gc
thresholds), and memory per pending request (tracemalloc).

The events are like the worker's (three labels, a model version and a trace id), each
added with its source offset as the live worker adds it. Three streams:

- complete: every request gets all three models' events (closed by its last one);
- expire: every request gets two of the three (closed by its deadline, 1 s later);
- two sources: complete, the third model's events from a second topic.

Each stream runs through the Python ``JoinTable`` and the compiled one
(``worker/join_compiled.py``, where native/ is built; not the two-source stream, which
it does not take), alternating, and prints the best of each and their ratio.

Memory (the Python table; tracemalloc does not see the compiled table's allocations,
``bench.memory``'s worker RSS does) is split into the decoded events and what adding
them to the table costs on top;
the table's share is net of what it frees (a later event's copy of the request id, an
unneeded trace id, a model_version or ts equal to one the table holds).

Run alone: ``python -m bench.bench_join [--requests N] [--repeat K] [--tables KIND...]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
import uuid

import orjson

from worker import native
from worker.config import build_config
from worker.decode import Decoder
from worker.events import PredictionEvent
from worker.join import JoinTable
from worker.join_compiled import CompiledJoinTable
from worker.runtime.main import GC_THRESHOLDS

MODELS = ["bert-base", "roberta", "distil"]
cfg = build_config(
    {
        "models": [{"name": m} for m in MODELS],
        "fusion": {"labels": ["negative", "neutral", "positive"]},
    }
)
dec = Decoder(cfg)
rng = random.Random(7)


def events(n_requests: int, models: list[str], t0: int = 1_700_000_000_000, spread: float = 0):
    """The decoded events of ``n_requests``, each model's event displaced by up to
    ``spread`` events from its request's place in the stream."""
    out = []
    for i in range(n_requests):
        rid = str(uuid.UUID(int=rng.getrandbits(128)))
        for m in models:
            a, b = sorted((rng.random(), rng.random()))
            v = orjson.dumps(
                {
                    "request_id": rid,
                    "model": m,
                    "ts": t0 + i,
                    "probs": [a, b - a, 1 - b],
                    "model_version": "v3",
                    "trace_id": rid.replace("-", ""),
                }
            )
            out.append((i * len(models) + rng.uniform(0, spread), dec.decode(v, None)))
    out.sort(key=lambda x: x[0])
    return [e for _, e in out]


def run(
    evs: list[PredictionEvent], per_ms: int = 100, second_source: str = "", kind: str = "python"
) -> float:
    """Events per CPU second (of this process) through add, expire and drain: ``per_ms``
    events per ms of the clock, one batch each; the third model's events from
    ``second_source`` if given. ``kind``: the Python ``JoinTable`` or the compiled one."""
    table = CompiledJoinTable if kind == "compiled" else JoinTable
    t = table(MODELS, 1000, 5000, 100_000)
    add, expire, drain = t.add, t.expire, t.drain
    sources = [("predictions", 0)] * len(MODELS)
    if second_source:
        sources[-1] = (second_source, 0)
    index = {m: i for i, m in enumerate(MODELS)}
    placed = [sources[index[e.model]][0] for e in evs]
    now = 1_700_000_000_000
    gc.collect()
    start = time.process_time()
    for k, e in enumerate(evs):
        add(e, now, placed[k], k)
        if k % per_ms == per_ms - 1:  # 100 events per ms of clock, one batch
            now += 1
            expire(now)
            drain()
            if k % 100_000 == 99_999:  # a commit about once a second of clock
                t.oldest_offsets()
    t.close_all(now)
    drain()
    return len(evs) / (time.process_time() - start)


def memory(n: int, k: int) -> tuple[float, float]:
    """(bytes per pending request for its events, for the table on top) with ``k`` of
    the three models' events each."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evs = events(n, MODELS[:k])
    ev_mem = tracemalloc.get_traced_memory()[0] - base - 8 * len(evs)  # minus the list
    t = JoinTable(MODELS, 1000, 5000, 100_000)
    before = tracemalloc.get_traced_memory()[0]
    for i, e in enumerate(evs):
        t.add(e, 1_700_000_000_000 + i // 100, "predictions", i)
    table_mem = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(t) == n
    return ev_mem / n, table_mem / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    p.add_argument("--memory", type=int, default=20_000, help="pending requests; 0: skip")
    p.add_argument(
        "--tables",
        nargs="+",
        choices=["python", "compiled"],
        default=["python", "compiled"] if native.JoinCore is not None else ["python"],
        help="the tables to run, alternating (default: both where native/ is built)",
    )
    args = p.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # as the worker runs
    n = args.requests
    streams = [
        ("complete, arrival spread 30 events", events(n, MODELS, spread=30), ""),
        ("complete, arrival spread 3000 events", events(n, MODELS, spread=3000), ""),
        ("expire (2 of 3 models), spread 30", events(n, MODELS[:2], spread=30), ""),
        ("complete, two sources, spread 30", events(n, MODELS, spread=30), "more"),
    ]
    for name, evs, second in streams:
        # The table slims the events it accepts; each run gets its own copies.
        best = dict.fromkeys(args.tables, 0.0)
        for _ in range(args.repeat):
            for kind in args.tables:
                if kind == "compiled" and second:
                    continue  # the compiled table takes one source
                copies = [_copy(e) for e in evs]
                best[kind] = max(best[kind], run(copies, second_source=second, kind=kind))
        figures = ", ".join(f"{kind} {rate:,.0f}" for kind, rate in best.items() if rate)
        ratio = (
            f" (compiled / python: {best['compiled'] / best['python']:.2f})"
            if best.get("compiled") and best.get("python")
            else ""
        )
        print(f"add+expire+drain, {name}: {figures} events/s{ratio}", flush=True)
    if args.memory:
        for k in (1, 2):
            ev_mem, table_mem = memory(args.memory, k)
            print(
                f"per pending request with {k} of 3 events: events {ev_mem:.0f} B + table "
                f"{table_mem:.0f} B = {ev_mem + table_mem:.0f} B",
                flush=True,
            )


def _copy(e: PredictionEvent) -> PredictionEvent:
    return PredictionEvent(
        e.request_id, e.model, e.ts, e.probs, e.label, e.score, e.model_version, e.trace_id
    )


if __name__ == "__main__":
    main()
