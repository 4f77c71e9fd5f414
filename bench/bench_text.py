"""Throughput of text fusion: requests fused per second, per strategy and similarity.

Each request has 10 members' texts of 200 tokens: one base text of words drawn from
the English words of pyjokes' sentences, and per member a copy with 10% of its words
replaced, 3% dropped and 3% of neighbours swapped (seed 7). The goal: ``consensus``
with chrF over 10 members x 200 tokens at >= 2,000 requests/s on this machine.

Figures, each the best of ``--repeat`` runs over a batch of ``--requests`` requests:

- ``consensus`` with ``chrf`` / ``token_f1`` / ``wer``: ``fuse_text_batch`` end to end
  (normalisation, similarity matrices, MBR, result objects);
- ``chrf matrices only``: the similarity matrices without the strategy;
- ``text_vote``: 10 members' short answers (1-3 words);
- the per-pair approach: sacrebleu's ``sentence_chrf`` for the 90 ordered pairs of a
  request, in a Python loop (on a few requests), for comparison.

Also printed: CPU seconds per request (``time.process_time``), less disturbed than
the wall clock by other processes on a shared machine, and the machine's load. The
goal is judged on both clocks, one line each. ``--threads N`` counts n-grams on N
threads (``[fusion] text_threads``): the wall clock then shows what N cores fuse, the
CPU figure stays per CPU second (all threads' time).

Run: ``.venv/bin/python bench/bench_text.py [--requests N] [--repeat R] [--threads N]
[--numpy]``.
Prints, asserts nothing. BLAS is limited to one thread so that the figures are for one
core. chrF and token F1 count n-grams with the compiled kernel when numba is installed
(compiled before the timings); ``--numpy`` hides numba, so the numpy counting runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

if "--numpy" in sys.argv:
    sys.modules["numba"] = None  # type: ignore[assignment]

from worker.fusion import overlaps  # noqa: E402
from worker.fusion.similarity import chrf_matrices  # noqa: E402
from worker.fusion.text import TextOptions, fuse_text_batch  # noqa: E402

MEMBERS = 10
TOKENS = 200
GOAL_RPS = 2000.0


def vocabulary() -> list[str]:
    """English words from pyjokes' sentences (falls back to made-up words without it)."""
    try:
        import pyjokes

        words = {w for joke in pyjokes.get_jokes("en", "all") for w in joke.split()}
        return sorted(words)
    except ImportError:  # pragma: no cover - pyjokes is in the dev extra
        rng = random.Random(1)
        return ["".join(rng.choices("etaoinshrdlucmfw", k=rng.randint(2, 9))) for _ in range(3000)]


def member_text(base: list[str], words: list[str], rng: random.Random) -> str:
    out = [w if rng.random() > 0.10 else rng.choice(words) for w in base if rng.random() > 0.03]
    for i in range(len(out) - 1):
        if rng.random() < 0.03:
            out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def requests(n: int, seed: int = 7) -> list[list[str | None]]:
    rng = random.Random(seed)
    words = vocabulary()
    batch: list[list[str | None]] = []
    for _ in range(n):
        base = [rng.choice(words) for _ in range(TOKENS)]
        batch.append([member_text(base, words, rng) for _ in range(MEMBERS)])
    return batch


def short_answers(n: int, seed: int = 7) -> list[list[str | None]]:
    rng = random.Random(seed)
    answers = ["Paris", "paris.", "Lyon", "New York", "new  york", "I don't know"]
    return [[rng.choice(answers) for _ in range(MEMBERS)] for _ in range(n)]


def best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of ``repeat`` runs."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeat):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def per_pair_sacrebleu(batch: list[list[str | None]]) -> None:
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    for texts in batch:
        for i, h in enumerate(texts):
            for j, r in enumerate(texts):
                if i != j and h is not None and r is not None:
                    chrf.sentence_score(h, [r])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--numpy", action="store_true", help="count n-grams without numba")
    parser.add_argument("--threads", type=int, default=1, help="n-gram counting threads")
    args = parser.parse_args()
    t0 = time.perf_counter()
    compiled = overlaps.prepare(args.threads)
    counting = (
        f"compiled kernel on {args.threads} thread(s) (ready in {time.perf_counter() - t0:.2f} s)"
        if compiled
        else "numpy"
    )
    print(f"n-gram counting: {counting}")
    n = args.requests
    batch = requests(n)
    weights = [1.0 + 0.1 * i for i in range(MEMBERS)]
    tokens = sum(len(t.split()) for row in batch for t in row if t) / (n * MEMBERS)
    print(f"{n} requests x {MEMBERS} members, {tokens:.0f} tokens per text (mean)")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'case':<32} {'req/s (wall)':>13} {'req/s (CPU)':>12} {'ms/req CPU':>11}")
    present = [[t for t in row if t is not None] for row in batch]
    cases: list[tuple[str, Callable[[], object], int]] = [
        (
            f"consensus, {sim}",
            lambda sim=sim: fuse_text_batch(
                batch, weights, "consensus", TextOptions(similarity=sim)
            ),  # type: ignore[misc]
            n,
        )
        for sim in ("chrf", "token_f1", "wer")
    ]
    cases.append(("chrf matrices only", lambda: chrf_matrices(present), n))
    answers = short_answers(n)
    cases.append(
        ("text_vote, short answers", lambda: fuse_text_batch(answers, weights, "text_vote"), n)
    )
    few = batch[:5]
    cases.append(("per-pair sacrebleu chrF (5 req)", lambda: per_pair_sacrebleu(few), len(few)))
    results: dict[str, tuple[float, float]] = {}
    for name, fn, count in cases:
        wall, cpu = best(fn, args.repeat if count == n else 1)
        results[name] = (count / wall, count / cpu)
        print(
            f"{name:<32} {count / wall:>13,.0f} {count / cpu:>12,.0f} {1000 * cpu / count:>11.3f}"
        )
    # Two verdicts: the wall clock counts the time other processes take the core; CPU
    # seconds (one core, BLAS on one thread) count only this process.
    for i, clock in enumerate(("wall", "CPU")):
        rps = results["consensus, chrf"][i]
        verdict = "met" if rps >= GOAL_RPS else "NOT met"
        print(f"goal: consensus chrF >= {GOAL_RPS:,.0f} req/s ({clock}): {verdict} ({rps:,.0f})")
    rps = results["consensus, chrf"][0]
    baseline = results["per-pair sacrebleu chrF (5 req)"][0]
    print(f"speed-up over per-pair sacrebleu (wall): {rps / baseline:,.0f}x")


if __name__ == "__main__":
    main()
