"""Factories shared by the fusion tests: configurations, finished requests and a
synthetic labelled history written as the files ``fusion-worker fit`` reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from worker.config import Config, build_config
from worker.events import FinishedRequest, PredictionEvent

MODELS = ("bert", "roberta", "distil")
LABELS = ("negative", "neutral", "positive")


def make_config(
    weights: Sequence[float] = (0.3, 0.4, 0.3),
    labels: Sequence[str] = LABELS,
    models: Sequence[str] | None = None,
    min_models: int = 1,
    **fusion: Any,
) -> Config:
    """A valid Config: ``models`` (default bert/roberta/distil...) with ``weights``."""
    names = list(models) if models is not None else [f"m{j}" for j in range(len(weights))]
    if models is None and len(weights) == len(MODELS):
        names = list(MODELS)
    if not labels:
        fusion.setdefault("strategy", "weighted_average")  # the default soft_vote needs labels
    return build_config(
        {
            "models": [{"name": n, "weight": w} for n, w in zip(names, weights, strict=True)],
            "join": {"min_models": min_models},
            "fusion": {"labels": list(labels), **fusion},
        }
    )


def finished(
    request_id: str, events: dict[str, PredictionEvent], opened_ms: int = 1_000
) -> FinishedRequest:
    """A finished request of ``events`` (model -> event), closed 7 ms after it opened."""
    first = min((ev.ts for ev in events.values()), default=opened_ms)
    return FinishedRequest(request_id, events, first, opened_ms, opened_ms + 7, False)


def probs_requests(
    probs: np.ndarray[Any, Any], present: np.ndarray[Any, Any] | None, models: Sequence[str]
) -> list[FinishedRequest]:
    """Finished requests from probs (n, m, k), the members where ``present`` (n, m)."""

    def event(i: int, j: int) -> PredictionEvent:
        return PredictionEvent(f"r{i}", models[j], 10 + j, probs=tuple(probs[i, j].tolist()))

    return _requests(probs.shape[:2], present, event)


def score_requests(
    scores: np.ndarray[Any, Any], present: np.ndarray[Any, Any] | None, models: Sequence[str]
) -> list[FinishedRequest]:
    """Finished requests from scores (n, m), the members where ``present`` (n, m)."""

    def event(i: int, j: int) -> PredictionEvent:
        return PredictionEvent(f"r{i}", models[j], 1, score=float(scores[i, j]))

    return _requests(scores.shape, present, event)


def _requests(
    shape: tuple[int, ...],
    present: np.ndarray[Any, Any] | None,
    event: Callable[[int, int], PredictionEvent],
) -> list[FinishedRequest]:
    """Requests r0..r(n-1), each of ``event(i, j)`` for the members j where ``present``
    (None: every member), for a (n, m) shape."""
    n, m = shape
    out = []
    for i in range(n):
        members = [event(i, j) for j in range(m) if present is None or present[i, j]]
        out.append(finished(f"r{i}", {ev.model: ev for ev in members}))
    return out


def write_history(
    directory: Path,
    n: int = 600,
    seed: int = 3,
    models: Sequence[str] = MODELS,
    labels: Sequence[str] = LABELS,
) -> tuple[Path, Path]:
    """A synthetic labelled history: members of different quality (the last one
    overconfident), a few incomplete and unlabelled requests and one invalid line.
    Returns (predictions.jsonl, labels.jsonl)."""
    rng = np.random.default_rng(seed)
    k = len(labels)
    y = rng.integers(0, k, n)
    signal = np.linspace(2.0, 0.8, len(models))
    temperature = np.ones(len(models))
    temperature[-1] = 0.3
    events, truth = [], []
    for i in range(n):
        rid = f"req-{i}"
        for j, model in enumerate(models):
            if i % 50 == 7 and j == 1:
                continue  # incomplete request
            logits = rng.normal(size=k) + signal[j] * (np.arange(k) == y[i])
            p = np.exp(logits / temperature[j])
            p /= p.sum()
            events.append({"request_id": rid, "model": model, "ts": i, "probs": p.tolist()})
        if i % 40 != 5:  # some requests have no label
            truth.append({"request_id": rid, "label": labels[y[i]]})
    predictions = directory / "predictions.jsonl"
    label_file = directory / "labels.jsonl"
    lines = [orjson.dumps(e) for e in events] + [b'{"request_id": "x", "model": "nope"}']
    predictions.write_bytes(b"\n".join(lines) + b"\n")
    label_file.write_bytes(b"\n".join(orjson.dumps(t) for t in truth) + b"\n")
    return predictions, label_file
