"""A labelled stream for the learning tests, simulated offline on event time: three
models, one of which may degrade halfway; each request is fused (soft vote) when it
arrives, and its label arrives 0.5-2 s later, when the feedback memory joins it and the
weights learn. The same seed gives the same figures.

    python -m tests.fusion.drift      # prints the figures of the drift and stationary runs
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.fusion.adaptive import AdaptiveWeights
from worker.fusion.feedback import JOINED, FeedbackMemory, LabelEvent, Remembered
from worker.fusion.quality import QualityWindows

Array = np.ndarray[Any, Any]
MODELS = ("alpha", "beta", "gamma")
SPACING_MS = 50  # 20 requests per second
LABEL_DELAY_MS = (500, 2_000)
LOG_FLOOR = 1e-15


@dataclass(frozen=True, slots=True)
class Stream:
    """probs (n, m, k), y (n,), the accuracy each member really had per half."""

    probs: Array
    y: Array
    label_ts: Array
    accuracy_before: Array
    accuracy_after: Array


def make_stream(
    n: int = 20_000,
    k: int = 4,
    accuracy: Sequence[float] = (0.9, 0.85, 0.9),
    degraded: Sequence[float] | None = (0.9, 0.85, 0.4),
    seed: int = 5,
) -> Stream:
    """Each member names the true label with its accuracy, else a uniformly drawn wrong
    one, and puts most of its probability there (a softmax of noisy logits). From the
    middle on, the accuracies are ``degraded`` (None: a stationary stream)."""
    rng = np.random.default_rng(seed)
    m = len(accuracy)
    y = rng.integers(k, size=n)
    half = n // 2
    acc = np.tile(np.asarray(accuracy, dtype=float), (n, 1))
    if degraded is not None:
        acc[half:] = degraded
    right = rng.random((n, m)) < acc
    wrong = (y[:, None] + rng.integers(1, k, size=(n, m))) % k
    named = np.where(right, y[:, None], wrong)
    logits = rng.normal(scale=0.4, size=(n, m, k))
    logits[np.arange(n)[:, None], np.arange(m)[None, :], named] += rng.uniform(1.5, 3.0, (n, m))
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    label_ts = np.arange(n) * SPACING_MS + rng.integers(*LABEL_DELAY_MS, size=n)
    hit = probs.argmax(axis=2) == y[:, None]
    return Stream(probs, y, label_ts, hit[:half].mean(axis=0), hit[half:].mean(axis=0))


@dataclass(slots=True)
class Run:
    """What one pass over a stream gave: the fused probs per request, the weights after
    each label joined (with the index of the request it labelled) and the quality."""

    fused: Array
    weights: list[Array] = field(default_factory=list)
    labelled: list[int] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)


def run(stream: Stream, adaptive: bool, learning_rate: float = 0.01, floor: float = 0.02) -> Run:
    """Fuse each request with the weights of the moment (equal and fixed unless
    ``adaptive``); join each label at its event time and learn from it."""
    n, m, k = stream.probs.shape
    learner = AdaptiveWeights(MODELS, np.ones(m), learning_rate, floor)
    memory = FeedbackMemory(memory_ms=10_000, memory_count=10_000)
    windows = QualityWindows(MODELS, window=1_000)
    present = np.ones(m, dtype=bool)
    fused = np.zeros((n, k))
    out = Run(fused)
    labels: list[tuple[int, int]] = []  # (label ts, request index), a min-heap
    for i in range(n):
        now_ms = i * SPACING_MS
        while labels and labels[0][0] <= now_ms:
            ts, j = heapq.heappop(labels)
            joined = memory.join(LabelEvent(f"r{j}", int(ts), label=int(stream.y[j])), int(ts))
            out.outcomes[joined.outcome] = out.outcomes.get(joined.outcome, 0) + 1
            if joined.outcome == JOINED and joined.request is not None:
                req = joined.request
                assert req.fused_probs is not None
                windows.observe(req.member_probs, req.present, req.fused_probs, int(stream.y[j]))
                if adaptive:
                    learner.update(req.member_probs, req.present, int(stream.y[j]))
                out.weights.append(learner.weights)
                out.labelled.append(j)
        w = learner.weights
        fused[i] = w @ stream.probs[i]
        memory.remember(
            Remembered(f"r{i}", now_ms, present, stream.probs[i], np.empty(0), fused[i], None),
            now_ms,
        )
        heapq.heappush(labels, (int(stream.label_ts[i]), i))
    out.quality = dict(windows.snapshot())
    return out


def accuracy(probs: Array, y: Array) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def log_loss(probs: Array, y: Array) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], LOG_FLOOR, 1.0)).mean())


def labels_until_below(run_: Run, member: int, threshold: float, first_request: int) -> int | None:
    """How many labels of requests from ``first_request`` on joined before ``member``'s
    weight went below ``threshold``; None if it never did."""
    count = 0
    for w, j in zip(run_.weights, run_.labelled, strict=True):
        if j >= first_request:
            count += 1
            if w[member] < threshold:
                return count
    return None


def main() -> int:
    drift = make_stream()
    half = len(drift.y) // 2
    static, learned = run(drift, adaptive=False), run(drift, adaptive=True)
    before, after = drift.accuracy_before.round(3), drift.accuracy_after.round(3)
    print(f"member accuracy before {before}, after {after}")
    print(f"gamma below 0.15 after {labels_until_below(learned, 2, 0.15, half)} post-drift labels")
    print(f"final weights {learned.weights[-1].round(4)}")
    for name, r in (("static", static), ("adaptive", learned)):
        print(
            f"{name:8} second half accuracy {accuracy(r.fused[half:], drift.y[half:]):.4f} "
            f"log loss {log_loss(r.fused[half:], drift.y[half:]):.4f}; outcomes {r.outcomes}"
        )
    still = make_stream(degraded=None)
    for name, r in (("static", run(still, False)), ("adaptive", run(still, True))):
        print(
            f"stationary {name:8} accuracy {accuracy(r.fused, still.y):.4f} "
            f"log loss {log_loss(r.fused, still.y):.5f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
