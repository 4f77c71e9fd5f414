"""JoinTable: add() per second and memory per pending request (tracemalloc).

The events are like the worker's (three labels, a model version and a trace id). Memory
is split into the decoded events and what adding them to the table costs on top; the
table's share is net of what it frees (a later event's copy of the request id and an
unneeded trace id)."""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
import uuid

import orjson

from worker.config import build_config
from worker.decode import Decoder
from worker.join import JoinTable

MODELS = ["bert-base", "roberta", "distil"]
cfg = build_config(
    {
        "models": [{"name": m} for m in MODELS],
        "fusion": {"labels": ["negative", "neutral", "positive"]},
    }
)
dec = Decoder(cfg)
rng = random.Random(7)


def events(n_requests, models, t0=1_700_000_000_000, spread=0):
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


def run(evs, per_ms=100):
    t = JoinTable(MODELS, 1000, 5000, 100_000)
    add, expire, drain = t.add, t.expire, t.drain
    now = 1_700_000_000_000
    gc.collect()
    start = time.perf_counter()
    for k, e in enumerate(evs):
        add(e, now, "predictions", k)
        if k % per_ms == per_ms - 1:  # 100 events per ms of clock, one batch
            now += 1
            expire(now)
            drain()
    t.close_all(now)
    drain()
    return len(evs) / (time.perf_counter() - start)


for spread in (30, 3000):
    evs = events(100_000, MODELS, spread=spread)
    print(
        f"add+expire+drain, arrival spread {spread} events: "
        f"{max(run(evs) for _ in range(3)):,.0f} events/s"
    )

# memory: N pending requests with k of 3 models each (events decoded from bytes)
N = 20_000
for k in (1, 2):
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evs = events(N, MODELS[:k])
    ev_mem = tracemalloc.get_traced_memory()[0] - base - 8 * len(evs)  # minus the list
    t = JoinTable(MODELS, 1000, 5000, 100_000)
    before = tracemalloc.get_traced_memory()[0]
    for i, e in enumerate(evs):
        t.add(e, 1_700_000_000_000 + i // 100, "predictions", i)
    table_mem = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(t) == N
    print(
        f"per pending request with {k} of 3 events: events {ev_mem / N:.0f} B + table "
        f"{table_mem / N:.0f} B = {(ev_mem + table_mem) / N:.0f} B"
    )
    del evs, t
