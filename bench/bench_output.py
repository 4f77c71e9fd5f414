"""From finished requests to output records: requests per second, no broker.

N finished requests (3 models x 3 labels, each event with a model version and a
``trace_id``, as in the throughput benchmark; ``--partial`` of them with one member
missing, ``--traced`` of them with a ``traceparent`` on every member) are fused in
batches of ``--batch`` through the real Engine and Fuser, and their output records
built, as the live worker does. Three figures, in requests per second of this process's
CPU time (the machine is shared: wall time would mostly measure the other processes),
best of ``--repeat`` runs, with the garbage collector tuned as the worker tunes it
(``worker.runtime.main.tune_gc``):

- fuse:    ``Fuser.fuse``, the result dict of each request (batch arrays, strategy,
           results);
- encode:  the result dicts of the fused batches to ``OutRecord``s (JSON bytes, key,
           ``traceparent`` header), what the engine adds when it encodes;
- engine:  both, as ``Engine`` runs them for a step (the figure that counts);
- tally:   what the loop then counts of the fused batches (``Metrics.observe_results``
           and ``observe_arrivals``: statuses, missing models, disagreement, latencies).

Then the engine and tally figures again as the live worker runs them, without result
dicts (``Engine(..., results=False)``): the compiled writer's bytes and counts where it
is installed (``native/``) and covers the batch, the figures above where not.

Run: ``.venv/bin/python bench/bench_output.py [--requests N] [--repeat R]
[--strategy NAME] [--profile FILE]``; ``--profile`` writes a cProfile of the engine
figure's runs and prints its top functions. Prints, asserts nothing. To compare two
trees, run it alternately with ``PYTHONPATH`` pointing at each.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402

import worker  # noqa: E402
from worker.config import Config, build_config  # noqa: E402
from worker.engine import Engine, OutRecord, Step  # noqa: E402
from worker.events import FinishedRequest, PredictionEvent  # noqa: E402
from worker.fusion import Fuser  # noqa: E402
from worker.metrics import Metrics  # noqa: E402
from worker.runtime.main import tune_gc  # noqa: E402
from worker.tracecontext import HEADER, fused_traceparent  # noqa: E402

dumps: Callable[[dict[str, Any]], bytes]
try:
    from worker.fusion.result import result_json as dumps
except ImportError:  # a tree from before it: the engine used orjson.dumps
    dumps = orjson.dumps

MODELS = ("bert-base", "roberta-large", "distilbert")
LABELS = ("negative", "neutral", "positive")
WEIGHTS = (0.3, 0.4, 0.3)
TS0 = 1_764_000_000_000


def make_config(strategy: str) -> Config:
    return build_config(
        {
            "models": [{"name": m, "weight": w} for m, w in zip(MODELS, WEIGHTS, strict=True)],
            "fusion": {"strategy": strategy, "labels": list(LABELS)},
        }
    )


def make_requests(n: int, partial: float, traced: float, seed: int = 7) -> list[FinishedRequest]:
    """``n`` finished requests like the throughput benchmark's (see the module docstring)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rid = f"bench-{i:09d}"
        skip = rng.randrange(len(MODELS)) if rng.random() < partial else -1
        traceparent = rng.random() < traced
        events = {}
        for j, model in enumerate(MODELS):
            if j == skip:
                continue
            a, b = sorted((rng.random(), rng.random()))
            tp = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
            events[model] = PredictionEvent(
                rid,
                model,
                TS0 + i + j,
                probs=(round(a, 6), round(b - a, 6), round(1 - b, 6)),
                model_version=f"{model}-2025.06",
                trace_id=rid[-16:] * 2 if j == 0 else None,
                traceparent=tp if traceparent else None,
            )
        first = TS0 + i
        out.append(FinishedRequest(rid, events, first, first, first + 5, skip >= 0))
    return out


def encode(results: list[dict[str, Any]], finished: list[FinishedRequest]) -> list[OutRecord]:
    """What the engine adds to the fusion when it encodes: one OutRecord per result."""
    records = []
    for f, result in zip(finished, results, strict=True):
        header = fused_traceparent(f.request_id, f.members.values())
        records.append(
            OutRecord(
                "fused",
                f.request_id.encode(),
                dumps(result),
                None if header is None else [(HEADER, header)],
            )
        )
    return records


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500, help="requests per engine step")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--strategy", default="soft_vote")
    parser.add_argument("--partial", type=float, default=0.1)
    parser.add_argument("--traced", type=float, default=0.0)
    parser.add_argument("--profile", help="write a cProfile of the engine runs here")
    args = parser.parse_args()
    n = args.requests
    config = make_config(args.strategy)
    fuser = Fuser(config)
    engine = Engine(config, fuser)
    requests = make_requests(n, args.partial, args.traced)
    batches = [requests[i : i + args.batch] for i in range(0, n, args.batch)]
    tagged = [[(0, f) for f in b] for b in batches]
    results = [fuser.fuse(b) for b in batches]
    tune_gc()

    def fuse_only() -> None:
        for b in batches:
            fuser.fuse(b)

    def encode_only() -> None:
        for b, r in zip(batches, results, strict=True):
            encode(r, b)

    metrics = Metrics(models=MODELS, strategy=args.strategy, process_metrics=False)

    def tally_runs() -> None:
        for b, r in zip(batches, results, strict=True):
            metrics.observe_results(r)
            metrics.observe_arrivals(b)

    def engine_runs() -> None:
        for t in tagged:
            # The step's fusion and encoding, without decoding and joining.
            engine._fuse(t, Step())

    # The live worker's engine: no result dicts where the compiled writer covers a batch.
    try:
        bare = Engine(config, fuser, results=False)
    except TypeError:  # a tree from before it
        bare = engine
    steps = [Step() for _ in tagged]
    for t, step in zip(tagged, steps, strict=True):
        bare._fuse(t, step)

    def bare_runs() -> None:
        for t in tagged:
            bare._fuse(t, Step())

    def bare_tally_runs() -> None:
        for b, step in zip(batches, steps, strict=True):
            if step.results:
                metrics.observe_results(step.results)
            for c in getattr(step, "counted", ()):
                metrics.observe_counted(c)
            # The arrivals of what the writer did not count (all of it, before it did).
            metrics.observe_arrivals(getattr(step, "uncounted", b))

    fused = n / best_seconds(fuse_only, args.repeat)
    encoded = n / best_seconds(encode_only, args.repeat)
    whole = n / best_seconds(engine_runs, args.repeat)
    counted = n / best_seconds(tally_runs, args.repeat)
    live = n / best_seconds(bare_runs, args.repeat)
    live_counted = n / best_seconds(bare_tally_runs, args.repeat)
    written = sum(len(c.status_of) for s in steps for c in getattr(s, "counted", ()))
    print(
        f"{n:,} requests ({args.strategy}, {args.partial:.0%} partial, {args.traced:.0%} "
        f"traced), batches of {args.batch}, best of {args.repeat}, requests per CPU second "
        f"(worker from {os.path.dirname(worker.__file__)}):"
    )
    print(f"fuse    {fused:>12,.0f}")
    print(f"encode  {encoded:>12,.0f}")
    print(f"engine  {whole:>12,.0f}")
    print(f"tally   {counted:>12,.0f}")
    print(f"without result dicts ({written:,} of {n:,} results by the compiled writer):")
    print(f"engine  {live:>12,.0f}")
    print(f"tally   {live_counted:>12,.0f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(engine_runs)
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
