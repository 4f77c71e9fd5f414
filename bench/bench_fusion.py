"""Throughput of the fusion engine: requests fused per second, per strategy.

A batch of 10,000 requests x 3 members x 3 labels (every member present). For each
strategy two figures:

- array maths: ``Fuser.compute`` on a prebuilt Batch (the strategy alone);
- full fuse:   ``Fuser.fuse`` on the FinishedRequests (building the batch from the
               events, the strategy, and one result dict per request), as it runs, with
               the garbage collector on; and again with it paused during the timed call,
               to show how much of that figure the collector takes (about a dozen new
               containers per result trigger it again and again).

Beside them "the per-request approach": one ``np.average(probs_i, axis=0, weights=w)``
per request in a Python loop. The goals: soft_vote array maths >= 20x the per-request
approach and >= 1,000,000 requests/s on one core.

Run: ``.venv/bin/python bench/bench_fusion.py [--requests N] [--repeat R]``. Prints,
asserts nothing. BLAS is limited to one thread so that the figures are for one core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from worker.config import Config, build_config  # noqa: E402
from worker.events import FinishedRequest, PredictionEvent  # noqa: E402
from worker.fusion import Fuser, build_batch  # noqa: E402
from worker.fusion.artefact import stacking_document, write_artefact  # noqa: E402
from worker.fusion.registry import STRATEGIES  # noqa: E402

MODELS = ("bert-base", "roberta-large", "distilbert")
LABELS = ("negative", "neutral", "positive")
WEIGHTS = (0.3, 0.4, 0.3)


def best_seconds(fn: Callable[[], object], repeat: int, collector: bool = True) -> float:
    """The fastest of ``repeat`` runs (the least disturbed by other processes);
    ``collector=False`` pauses the garbage collector during each timed call."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        if not collector:
            gc.disable()
        try:
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best


def make_requests(n: int, seed: int = 1) -> tuple[list[FinishedRequest], np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(LABELS)), size=(n, len(MODELS)))
    requests = []
    for i, rows in enumerate(probs.tolist()):
        rid = f"req-{i}"
        events = {
            m: PredictionEvent(rid, m, 1_700_000_000_000 + i, probs=tuple(p), model_version="v1")
            for m, p in zip(MODELS, rows, strict=True)
        }
        requests.append(FinishedRequest(rid, events, events[MODELS[0]].ts, i, i + 5, False))
    return requests, probs


def make_config(stacker: Path) -> Config:
    return build_config(
        {
            "models": [{"name": m, "weight": w} for m, w in zip(MODELS, WEIGHTS, strict=True)],
            "fusion": {"labels": list(LABELS), "stacker": str(stacker)},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    n, repeat = args.requests, args.repeat

    requests, probs = make_requests(n)
    weights = np.array(WEIGHTS)

    def per_request() -> None:
        for i in range(n):
            np.average(probs[i], axis=0, weights=weights)

    baseline = n / best_seconds(per_request, max(1, repeat // 2))

    with tempfile.TemporaryDirectory() as tmp:
        stacker = Path(tmp) / "stacker.json"
        coef = np.random.default_rng(2).normal(size=(len(LABELS), len(MODELS) * len(LABELS)))
        write_artefact(stacker, stacking_document(MODELS, LABELS, coef, np.zeros(3), {}))
        config = make_config(stacker)
        batch = build_batch(requests, MODELS, len(LABELS))
        build = n / best_seconds(lambda: build_batch(requests, MODELS, len(LABELS)), repeat)

        print(f"fusion throughput: {n:,} requests x {len(MODELS)} members x {len(LABELS)} labels")
        print(f"numpy {np.__version__}, best of {repeat} runs, requests/s\n")
        print(f"per-request approach (np.average in a loop): {baseline:>14,.0f}")
        print(f"build_batch alone (events -> arrays):       {build:>14,.0f}\n")
        ratio = "x per-req"
        header = (
            f"{'strategy':<17}{'array maths':>13}{ratio:>10}{'full fuse':>11}{ratio:>10}"
            f"{'(gc paused)':>13}"
        )
        print(header)
        print("-" * len(header))
        for name in STRATEGIES:
            fuser = Fuser(config, name)
            maths = n / best_seconds(partial(fuser.compute, batch), repeat)
            full = n / best_seconds(partial(fuser.fuse, requests), repeat)
            paused = n / best_seconds(partial(fuser.fuse, requests), repeat, collector=False)
            print(
                f"{name:<17}{maths:>13,.0f}{maths / baseline:>9.1f}x"
                f"{full:>11,.0f}{full / baseline:>9.1f}x{paused:>13,.0f}"
            )
        soft = Fuser(config, "soft_vote")
        maths = n / best_seconds(lambda: soft.compute(batch), repeat)
        print(
            f"\nsoft_vote array maths: {maths:,.0f} requests/s = {maths / baseline:.0f}x the "
            f"per-request approach (goals: >= 20x and >= 1,000,000/s)"
        )


if __name__ == "__main__":
    main()
