"""Score fused text results against reference texts: one row per member, one per
strategy and one for the average member, by exact match, chrF and WER
(``worker.backtest.text_metrics``); the members' mutual chrF and missing rates.

The references come from the ``--labels`` file (or topic), whose lines carry
``{"request_id", "text"}`` under the text task (``inputs.load_labels``). Which requests
count is decided as for labels (``evaluate``): those with a result and a reference; an
``insufficient`` result is left out of the metrics and shows only in the coverage. A
member is scored on the referenced requests it reported, with the text the join kept.
Exact match compares the texts as sent (no normalisation): a member that drops case or
punctuation is not an exact match, as a user reading it would see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from worker.backtest.evaluate import STATUSES, Evaluation, Row, Samples
from worker.backtest.metrics import FloatArray
from worker.backtest.text_metrics import TEXT_METRICS, member_row, strategy_row
from worker.config import Config
from worker.fusion.similarity import SIMILARITIES

AVERAGE_MEMBER = "average member"
SUMMARY = "summary"


def evaluate_text(
    config: Config,
    results: Mapping[str, Sequence[dict[str, Any]]],
    references: Mapping[str, str],
) -> Evaluation:
    """Score ``results`` (variant name -> fused text results) on ``references``
    (request_id -> reference text)."""
    models = config.model_names
    first = next(iter(results.values()), [])
    seen = {r["request_id"] for r in first}
    kept = [r for r in first if r["request_id"] in references]
    ids = [r["request_id"] for r in kept]
    refs = {rid: references[rid] for rid in ids}
    n = len(ids)
    texts: list[dict[str, str]] = [{} for _ in models]
    for r in kept:
        members = r.get("members") or {}
        for j, m in enumerate(models):
            member = members.get(m)
            if member is not None:
                texts[j][r["request_id"]] = member["text"]
    rows = [_row(member_row(m, texts[j], refs), ids) for j, m in enumerate(models)]
    members = list(rows)
    for name, variant in results.items():
        by_id = {r["request_id"]: r for r in variant}
        fused = {rid: (by_id[rid]["status"], by_id[rid]["text"]) for rid in ids}
        rows.append(_row(strategy_row(name, fused, refs), ids))
    answered = [r for r in members if r.answered]
    if answered:
        average = {
            k: math.fsum(r.metrics[k] for r in answered) / len(answered) for k in TEXT_METRICS
        }
        empty = Samples((), np.zeros(0), np.zeros(0))
        rows.append(Row(AVERAGE_MEMBER, SUMMARY, n, n, {}, average, empty))
    return Evaluation(
        task="text",
        labels=(),
        models=models,
        rows=rows,
        agreement=mutual_chrf(texts, ids),
        missing_rate={
            m: 1.0 - len(texts[j]) / n if n else float("nan") for j, m in enumerate(models)
        },
        requests=n,
        unlabelled=len(first) - len(kept),
        unseen=len(set(references) - seen),
        notes=[
            "text scores: exact match of the texts as sent, corpus chrF (sacrebleu's, / 100) "
            "and corpus WER (jiwer's) against the references; the average member is the "
            "mean of the members' scores"
        ],
    )


def _row(row: Any, ids: Sequence[str]) -> Row:
    """A text_metrics row as the backtest's Row (no per-request samples: text has no
    paired bootstrap)."""
    coverage = dict(row.coverage)
    if row.kind == "strategy":
        coverage = {s: coverage.get(s, 0.0) for s in STATUSES}
    empty = Samples((), np.zeros(0), np.zeros(0))
    return Row(row.name, row.kind, len(ids), row.answered, coverage, dict(row.metrics), empty)


def mutual_chrf(texts: Sequence[Mapping[str, str]], ids: Sequence[str]) -> FloatArray:
    """(m, m): the mean sentence chrF of member i's text against member j's as the
    reference, over the requests both reported; nan where they never did."""
    m = len(texts)
    total = np.zeros((m, m))
    count = np.zeros((m, m))
    groups: list[list[str]] = []
    present: list[list[int]] = []
    for rid in ids:
        who = [j for j in range(m) if rid in texts[j]]
        if len(who) > 1:
            groups.append([texts[j][rid] for j in who])
            present.append(who)
    for who, matrix in zip(present, SIMILARITIES["chrf"](groups), strict=True):
        index = np.array(who)
        total[index[:, None], index[None, :]] += matrix
        count[index[:, None], index[None, :]] += 1
    out = np.full((m, m), np.nan)
    np.divide(total, count, out=out, where=count > 0)
    np.fill_diagonal(out, 1.0)
    return out
