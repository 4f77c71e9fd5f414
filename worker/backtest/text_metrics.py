"""Backtest scores for text answers: exact match, chrF and WER against references, per
member and per strategy (pure functions over lists; no I/O).

Definitions, over the n answered requests of a predictor:

- ``exact_match``: the share of answers equal to their reference once both are
  normalised (``TextNormalisation``; none by default).
- ``chrf``: corpus chrF in [0, 1], as sacrebleu's ``corpus_score`` / 100: the character
  n-gram statistics of every (answer, reference) pair summed, then one F-score (char
  order 6, beta 2, whitespace removed).
- ``wer``: corpus word error rate, as ``jiwer.wer`` on the lists: the sum of the word
  edit distances over the sum of the references' word counts (lower is better).

The rows have the fields the backtest table reads (``name``, ``kind``, ``requests``,
``answered``, ``coverage``, ``metrics``); see ``format_text_table``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein

from worker.fusion.overlaps import char_overlaps
from worker.fusion.similarity import CHRF_BETA, CHRF_CHAR_ORDER, tokens
from worker.fusion.textnorm import NONE, TextNormalisation, normalise

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

TEXT_METRICS = ("exact_match", "chrf", "wer")
HEADERS = {"exact_match": "exact match", "chrf": "chrF", "wer": "WER"}
STATUSES = ("complete", "partial", "insufficient")


@dataclass(frozen=True, slots=True)
class TextRow:
    """The scores of one predictor (a member model or a strategy) on text."""

    name: str
    kind: str  # "member" | "strategy"
    requests: int
    answered: int
    coverage: dict[str, float]
    metrics: dict[str, float]


def exact_match(
    answers: Sequence[str], references: Sequence[str], normalisation: TextNormalisation = NONE
) -> float:
    """The share of answers equal to their reference after normalisation; nan if none."""
    if not answers:
        return float("nan")
    same = sum(
        normalise(a, normalisation) == normalise(r, normalisation)
        for a, r in zip(answers, references, strict=True)
    )
    return same / len(answers)


def corpus_chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF / 100 of the pairs; nan if none."""
    if not answers:
        return float("nan")
    pairs = [[a, r] for a, r in zip(answers, references, strict=True)]
    lengths, matches = char_overlaps(pairs, CHRF_CHAR_ORDER)
    order = CHRF_CHAR_ORDER
    hyp = np.zeros(order)
    ref = np.zeros(order)
    match = np.zeros(order)
    for n_chars, overlap in zip(lengths, matches, strict=True):
        counts = np.maximum(n_chars[:, None] - np.arange(order)[None, :], 0)
        # sacrebleu counts no hypothesis n-grams of an order the reference lacks.
        hyp += np.where(counts[1] > 0, counts[0], 0)
        ref += counts[1]
        match += overlap[:, 0, 1]
    return _f_score(hyp, ref, match)


def _f_score(hyp: FloatArray, ref: FloatArray, match: FloatArray) -> float:
    """sacrebleu's CHRF._compute_f_score (effective-order averaging) / 100."""
    factor = CHRF_BETA**2
    avg_prec = avg_rec = 0.0
    effective = 0
    for n_hyp, n_ref, n_match in zip(hyp.tolist(), ref.tolist(), match.tolist(), strict=True):
        if n_hyp > 0 and n_ref > 0:
            avg_prec += n_match / n_hyp
            avg_rec += n_match / n_ref
            effective += 1
    if effective:
        avg_prec /= effective
        avg_rec /= effective
    if not avg_prec + avg_rec:
        return 0.0
    score = (1 + factor) * avg_prec * avg_rec
    return float(score / (factor * avg_prec + avg_rec))


def corpus_wer(answers: Sequence[str], references: Sequence[str]) -> float:
    """jiwer's corpus WER of the pairs; nan if none or if the references have no word."""
    edits = words = 0
    for a, r in zip(answers, references, strict=True):
        ref = tokens(r)
        edits += Levenshtein.distance(tokens(a), ref)
        words += len(ref)
    return edits / words if words else float("nan")


def text_scores(
    answers: Sequence[str], references: Sequence[str], normalisation: TextNormalisation = NONE
) -> dict[str, float]:
    """All of ``TEXT_METRICS`` for one predictor's answered requests."""
    return {
        "exact_match": exact_match(answers, references, normalisation),
        "chrf": corpus_chrf(answers, references),
        "wer": corpus_wer(answers, references),
    }


def member_row(
    name: str,
    texts: Mapping[str, str],
    references: Mapping[str, str],
    normalisation: TextNormalisation = NONE,
) -> TextRow:
    """A member scored on the referenced requests it reported (``texts``: request_id ->
    its text). Coverage ``reported``: that share of the referenced requests."""
    ids = [rid for rid in references if rid in texts]
    scores = text_scores([texts[i] for i in ids], [references[i] for i in ids], normalisation)
    total = len(references)
    return TextRow(name, "member", total, len(ids), {"reported": len(ids) / total}, scores)


def strategy_row(
    name: str,
    results: Mapping[str, tuple[str, str | None]],
    references: Mapping[str, str],
    normalisation: TextNormalisation = NONE,
) -> TextRow:
    """A strategy scored on the referenced requests it answered (``results``:
    request_id -> (status, fused text or None)). Coverage: the share of each status."""
    ids = [rid for rid in references if rid in results and results[rid][1] is not None]
    answers = [results[i][1] for i in ids]
    scores = text_scores(
        [a for a in answers if a is not None], [references[i] for i in ids], normalisation
    )
    seen = [results[rid][0] for rid in references if rid in results]
    total = len(references)
    coverage = {s: sum(x == s for x in seen) / total for s in STATUSES}
    return TextRow(name, "strategy", total, len(ids), coverage, scores)


def format_text_table(rows: Sequence[TextRow]) -> str:
    """Members, then strategies, in the layout of the backtest table."""
    header = ["predictor", "kind", "answered", *(HEADERS[n] for n in TEXT_METRICS)]
    body = [
        [r.name, r.kind, f"{r.answered}/{r.requests}", *(_num(r.metrics[n]) for n in TEXT_METRICS)]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        rest = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(first + rest).rstrip()

    rule = "-" * len(line(header))
    out = [line(header), rule]
    for i, cells in enumerate(body):
        if i and rows[i].kind != rows[i - 1].kind:
            out.append(rule)
        out.append(line(cells))
    return "\n".join(out)


def _num(v: float) -> str:
    return "n/a" if v != v else f"{v:.4f}"
