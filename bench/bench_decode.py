"""Decodes per second on 100k valid events (three labels, probs, some with labels order).

Prints the decoder (``Decoder.decode``: the typed msgspec fast path), its careful path
alone (``Decoder.decode_careful``: orjson and the checks by hand, what every event took
before the fast path) in alternating rounds, medians and their ratio; the parsers alone;
and the decoder on a mix with one invalid event in ten (those take both paths).
``--rounds N`` sets the number of alternating rounds (default 5).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import orjson

from worker.config import build_config
from worker.decode import Decoder
from worker.decode_wire import wire_decoder
from worker.errors import InvalidEvent

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
# One in ten broken: an unknown model (a config reason, found on the fast path), a
# negative probability, a null field, an unknown field (wire reasons: the careful path).
BROKEN = [
    (b'"model":"bert-base"', b'"model":"gpt-9"'),
    (b'"probs":[', b'"probs":[-'),
    (b'"model_version":"v3"', b'"model_version":null'),
    (b'"trace_id"', b'"traceid"'),
]
mixed = [
    v.replace(*BROKEN[(i // 10) % len(BROKEN)], 1) if i % 10 == 0 else v
    for i, v in enumerate(values)
]


def rate(decode: Callable[[bytes, int | None], object], batch: list[bytes]) -> float:
    t = time.perf_counter()
    for v in batch:
        try:  # noqa: SIM105 - contextlib.suppress per event would weigh in the figure
            decode(v, None)
        except InvalidEvent:
            pass
    return len(batch) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    d = Decoder(cfg)
    for v in values[:1000]:
        d.decode(v, None)
    fast: list[float] = []
    careful: list[float] = []
    for _ in range(rounds):
        fast.append(rate(d.decode, values))
        careful.append(rate(d.decode_careful, values))
    f, c = statistics.median(fast), statistics.median(careful)
    print(f"decode: {f:,.0f} events/s (rounds: {', '.join(f'{x:,.0f}' for x in fast)})")
    print(
        f"careful path alone: {c:,.0f} events/s (rounds: {', '.join(f'{x:,.0f}' for x in careful)})"
    )
    print(f"ratio decode / careful: {f / c:.2f}x")
    parse = wire_decoder().decode
    t = time.perf_counter()
    for v in values:
        parse(v)
    msgspec_rate = len(values) / (time.perf_counter() - t)
    t = time.perf_counter()
    for v in values:
        orjson.loads(v)
    loads_rate = len(values) / (time.perf_counter() - t)
    print(
        f"parsers alone: msgspec WireEvent {msgspec_rate:,.0f}/s, orjson.loads {loads_rate:,.0f}/s"
    )
    mix = statistics.median(rate(d.decode, mixed) for _ in range(rounds))
    print(f"decode, one event in ten invalid: {mix:,.0f} events/s")


if __name__ == "__main__":
    main()
