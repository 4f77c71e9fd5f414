"""Score fused results against the true labels: one row per member model and one per
strategy, plus the members' agreement and missing rates.

Which requests count: those with a fused result and a label. A result without a label
is left out (counted in ``unlabelled``); a label without any result is counted in
``unseen``. An ``insufficient`` result has no prediction: it is excluded from every
accuracy-like metric and shows only in the coverage. A member is scored on the
requests it reported (its ``reported`` coverage), with the prediction the join kept
(the first event of that model for the request).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.backtest.metrics import (
    BoolArray,
    FloatArray,
    IntArray,
    agreement_matrix,
    agreement_scores,
    classification_metrics,
    regression_metrics,
    reliability_bins,
)
from worker.config import Config
from worker.errors import FusionError

STATUSES = ("complete", "partial", "insufficient")
Label = str | float


@dataclass(frozen=True, slots=True)
class Samples:
    """The answered requests of one predictor, for resampling: ``ids`` and ``y_true``
    of shape (n,), ``y_pred`` (n,) label indices or scores, ``probs`` (n, k) or None."""

    ids: tuple[str, ...]
    y_true: FloatArray | IntArray
    y_pred: FloatArray | IntArray
    probs: FloatArray | None = None


@dataclass(frozen=True, slots=True)
class Row:
    """The scores of one predictor (a member model or a strategy).

    ``coverage``: for a strategy the share of requests per status, for a member the
    share it ``reported``; ``answered``: requests with a prediction, the ``n`` of the
    metrics; ``reliability``: (mean confidence, accuracy, count) per bin, or None.
    """

    name: str
    kind: str  # "member" | "strategy"
    requests: int
    answered: int
    coverage: dict[str, float]
    metrics: dict[str, float]
    samples: Samples
    reliability: tuple[FloatArray, FloatArray, IntArray] | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything the table and the report show."""

    task: str  # "classification" | "regression" | "text"
    labels: tuple[str, ...]
    models: tuple[str, ...]
    rows: list[Row]
    agreement: FloatArray  # (n_models, n_models); label agreement or score correlation
    missing_rate: dict[str, float]
    requests: int
    unlabelled: int
    unseen: int
    notes: list[str] = field(default_factory=list)

    @property
    def members(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "member"]

    @property
    def strategies(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "strategy"]


def evaluate(
    config: Config,
    results: Mapping[str, Sequence[dict[str, Any]]],
    truth: Mapping[str, Label],
) -> Evaluation:
    """Score ``results`` (variant name -> fused results, one per request) on ``truth``
    (request_id -> label string, or number for a regression config, or reference text
    for the text task: ``worker.backtest.text_evaluate``)."""
    if config.fusion.is_text:
        from worker.backtest.text_evaluate import evaluate_text

        return evaluate_text(config, results, {k: str(v) for k, v in truth.items()})
    labels = config.fusion.labels
    models = config.model_names
    regression = config.fusion.is_regression
    index = {name: i for i, name in enumerate(labels)}
    first = next(iter(results.values()), [])
    seen = {r["request_id"] for r in first}
    kept = [r for r in first if r["request_id"] in truth]
    ids = [r["request_id"] for r in kept]
    n = len(ids)
    y: FloatArray | IntArray
    if regression:
        y = np.array([_number(truth[i], i) for i in ids], dtype=np.float64)
        scores = _member_scores(kept, models)
        present = ~np.isnan(scores)
        agreement = agreement_scores(scores)
        member_samples = [
            Samples(_pick(ids, present[:, j]), y[present[:, j]], scores[present[:, j], j])
            for j in range(len(models))
        ]
    else:
        y = np.array([_label_index(truth[i], index, i) for i in ids], dtype=np.int64)
        member_labels, member_probs = _member_labels(kept, models, index)
        present = member_labels >= 0
        agreement = agreement_matrix(member_labels)
        member_samples = [
            Samples(
                _pick(ids, present[:, j]),
                y[present[:, j]],
                member_labels[present[:, j], j],
                member_probs[j],  # already only the requests it reported
            )
            for j in range(len(models))
        ]
    rows = [
        _row(m, "member", n, {"reported": _share(len(sm.ids), n)}, sm, len(labels))
        for m, sm in zip(models, member_samples, strict=True)
    ]
    for name, variant in results.items():
        by_id = {r["request_id"]: r for r in variant}
        ordered = [by_id[i] for i in ids]
        samples = _strategy_samples(ordered, y, index)
        rows.append(_row(name, "strategy", n, _coverage(ordered), samples, len(labels)))
    return Evaluation(
        task="regression" if regression else "classification",
        labels=labels,
        models=models,
        rows=rows,
        agreement=agreement,
        missing_rate={
            m: float(1.0 - present[:, j].mean()) if n else float("nan")
            for j, m in enumerate(models)
        },
        requests=n,
        unlabelled=len(first) - len(kept),
        unseen=len(set(truth) - seen),
    )


def _row(
    name: str, kind: str, requests: int, coverage: dict[str, float], s: Samples, n_labels: int
) -> Row:
    if n_labels == 0:
        metrics = regression_metrics(s.y_true.astype(np.float64), s.y_pred.astype(np.float64))
        return Row(name, kind, requests, len(s.ids), coverage, metrics, s)
    y_true, y_pred = s.y_true.astype(np.int64), s.y_pred.astype(np.int64)
    metrics = classification_metrics(y_true, y_pred, s.probs, n_labels)
    reliability = None
    if s.probs is not None and len(s.probs):
        reliability = reliability_bins(y_true, s.probs)
    return Row(name, kind, requests, len(s.ids), coverage, metrics, s, reliability)


def _strategy_samples(
    results: Sequence[dict[str, Any]], y: FloatArray | IntArray, index: Mapping[str, int]
) -> Samples:
    """The answered results (``insufficient`` ones have no prediction)."""
    answered = [k for k, r in enumerate(results) if r["status"] != "insufficient"]
    ids = tuple(results[k]["request_id"] for k in answered)
    if not index:
        pred = np.array([float(results[k]["score"]) for k in answered], dtype=np.float64)
        return Samples(ids, y[answered], pred)
    pred_int = np.array([index[results[k]["label"]] for k in answered], dtype=np.int64)
    probs: FloatArray | None = None
    if all(results[k].get("probs") is not None for k in answered):
        probs = np.array([results[k]["probs"] for k in answered], dtype=np.float64)
        probs = probs.reshape(len(answered), len(index))
    return Samples(ids, y[answered], pred_int, probs)


def _coverage(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    n = len(results)
    return {s: _share(sum(r["status"] == s for r in results), n) for s in STATUSES}


def _pick(ids: Sequence[str], mask: BoolArray) -> tuple[str, ...]:
    return tuple(i for i, keep in zip(ids, mask.tolist(), strict=True) if keep)


def _member_labels(
    results: Sequence[dict[str, Any]], models: Sequence[str], index: Mapping[str, int]
) -> tuple[IntArray, list[FloatArray | None]]:
    """Members' labels, shape (n_requests, n_models), -1 where missing; and per model
    its probs, shape (n_reported, n_labels), or None when it sent hard labels."""
    n, k = len(results), len(index)
    out = np.full((n, len(models)), -1, dtype=np.int64)
    probs: list[list[list[float]] | None] = [[] for _ in models]
    for i, r in enumerate(results):
        members = r.get("members") or {}
        for j, m in enumerate(models):
            member = members.get(m)
            # label None: the member abstained (named no fused label), scored as absent.
            if member is None or member.get("label") is None:
                continue
            out[i, j] = index[member["label"]]
            rows = probs[j]
            if member.get("probs") is None:
                probs[j] = None  # a hard-label member: no probabilistic metrics
            elif rows is not None:
                # null: a label the model does not cover, probability 0 for its scores.
                rows.append([0.0 if p is None else p for p in member["probs"]])
    arrays: list[FloatArray | None] = [
        None if p is None else np.array(p, dtype=np.float64).reshape(-1, k) for p in probs
    ]
    return out, arrays


def _member_scores(results: Sequence[dict[str, Any]], models: Sequence[str]) -> FloatArray:
    out = np.full((len(results), len(models)), np.nan)
    for i, r in enumerate(results):
        members = r.get("members") or {}
        for j, m in enumerate(models):
            member = members.get(m)
            if member is not None and member.get("score") is not None:
                out[i, j] = float(member["score"])
    return out


def _label_index(value: Label, index: Mapping[str, int], request_id: str) -> int:
    if not isinstance(value, str) or value not in index:
        raise FusionError(
            f"label {value!r} of request {request_id!r} is not one of fusion.labels {list(index)}"
        )
    return index[value]


def _number(value: Label, request_id: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FusionError(f"label {value!r} of request {request_id!r} must be a number")
    return float(value)


def _share(count: int, total: int) -> float:
    return count / total if total else float("nan")
