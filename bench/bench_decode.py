"""Decodes per second on 100k valid events (three labels, probs, some with labels order)."""

from __future__ import annotations

import random
import time

import orjson

from worker.config import build_config
from worker.decode import Decoder

cfg = build_config(
    {
        "models": [{"name": "bert-base"}, {"name": "roberta"}, {"name": "distil"}],
        "fusion": {"labels": ["negative", "neutral", "positive"]},
    }
)
rng = random.Random(7)
values = []
for i in range(100_000):
    a, b = rng.random(), rng.random()
    lo, hi = min(a, b), max(a, b)
    ev = {
        "request_id": f"req-{i:08d}-{rng.getrandbits(64):016x}",
        "model": rng.choice(cfg.model_names),
        "ts": 1_700_000_000_000 + i,
        "probs": [lo, hi - lo, 1 - hi],
        "model_version": "v3",
        "trace_id": f"t{i}",
    }
    if i % 4 == 0:
        ev["labels"] = ["positive", "negative", "neutral"]
    values.append(orjson.dumps(ev))
d = Decoder(cfg)
dec = d.decode
for v in values[:1000]:
    dec(v, None)
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    for v in values:
        dec(v, None)
    best = max(best, len(values) / (time.perf_counter() - t))
t = time.perf_counter()
for v in values:
    orjson.loads(v)
loads_rate = len(values) / (time.perf_counter() - t)
print(f"decode: {best:,.0f} events/s (orjson.loads alone: {loads_rate:,.0f}/s)")
