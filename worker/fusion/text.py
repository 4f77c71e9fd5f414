"""Text fusion: one answer from the members' texts of each request (pure; no I/O).

Two strategies, both over a whole batch of requests; ``texts[r][i]`` is member i's text
for request r (members in configured order), ``None`` where member i did not report.

- ``text_vote``: a weighted vote over the normalised answers (``textnorm``), for short
  answers (LLM question answering, intent names). The answer with the most weight wins;
  a tie goes to the answer whose first voter comes first in the configured model order.
  The fused text is the own text of the winning answer's voter with the largest weight
  (ties: model order). A member's similarity is 1 if its normalised answer is the
  winner, else 0.
- ``consensus``: minimum-Bayes-risk selection. Each present member's normalised text is
  a candidate; its score is its weighted mean similarity (``similarity``: chrF by
  default, token F1, or 1 - WER floored at 0) to the other present members' texts,
  taken as references: ``sum_{j != i} w_j sim(i, j) / sum_{j != i} w_j``. The highest
  score wins, ties to the model order. A candidate whose other members all have weight
  0 scores 1: it is then the only evidence there is. A member's similarity is
  ``sim(member, chosen)`` with the chosen text as the reference (1 for the chosen one).

For both, ``agreement`` is the weighted mean of the members' similarities over the
members present: for ``text_vote`` the share of the weight that voted for the fused
answer, as ``agreement`` is for a classification. A request without any present member
of weight above 0 has no result (``None``): the caller reports it ``insufficient``.
Weights may be given per request, shape (n, m), e.g. configured weights times each
member's own ``confidence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from worker.fusion.similarity import SIMILARITIES
from worker.fusion.textnorm import TextNormalisation, normalise

FloatArray = np.ndarray[Any, np.dtype[np.float64]]

TEXT_VOTE = "text_vote"
CONSENSUS = "consensus"
TEXT_STRATEGIES = (TEXT_VOTE, CONSENSUS)
# Short answers differ in case, spacing and punctuation without differing in meaning;
# translations and transcripts are compared by a similarity that already ignores spacing.
DEFAULT_NORMALISATION = {
    TEXT_VOTE: TextNormalisation(),
    CONSENSUS: TextNormalisation(nfkc=True, case=False, punctuation=False, whitespace=True),
}


@dataclass(frozen=True, slots=True)
class TextOptions:
    """How texts are compared. ``normalisation``: None means the strategy's default
    (``DEFAULT_NORMALISATION``); ``similarity``: a key of ``SIMILARITIES``."""

    normalisation: TextNormalisation | None = None
    similarity: str = "chrf"


def text_normalisation(strategy: str, steps: Sequence[str] | None) -> TextNormalisation:
    """The normalisation in force: the configured ``steps`` (``[fusion] normalise``), or
    the strategy's default when None."""
    if steps is None:
        return DEFAULT_NORMALISATION.get(strategy, TextNormalisation())
    return TextNormalisation.of(list(steps))


@dataclass(frozen=True, slots=True)
class TextResult:
    """The fused answer of one request.

    ``text``: the chosen member's own text (not normalised); ``chosen``: its index in
    the configured member order; ``similarities``: per member in configured order, its
    similarity to the chosen text, None where the member is missing; ``agreement``: the
    weighted mean of those similarities over the members present, in [0, 1]; ``scores``:
    per member, its vote total (text_vote) or MBR score (consensus), None where missing.
    """

    text: str
    chosen: int
    similarities: tuple[float | None, ...]
    agreement: float
    scores: tuple[float | None, ...]


def fuse_text(
    texts: Sequence[str | None],
    weights: Sequence[float] | FloatArray,
    strategy: str,
    options: TextOptions | None = None,
) -> TextResult | None:
    """One request: see ``fuse_text_batch``."""
    return fuse_text_batch([texts], weights, strategy, options)[0]


def fuse_text_batch(
    texts: Sequence[Sequence[str | None]],
    weights: Sequence[float] | FloatArray,
    strategy: str,
    options: TextOptions | None = None,
) -> list[TextResult | None]:
    """Fuse n requests of m members. ``weights``: shape (m,) or (n, m), each >= 0.
    Returns one ``TextResult`` per request, or None for a request with no present
    member of weight above 0."""
    options = options or TextOptions()
    if strategy not in TEXT_STRATEGIES:
        raise ValueError(f"unknown text strategy {strategy!r}; known: {list(TEXT_STRATEGIES)}")
    if options.similarity not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {options.similarity!r}; known: {sorted(SIMILARITIES)}"
        )
    n = len(texts)
    if not n:
        return []
    m = len(texts[0])
    if any(len(row) != m for row in texts):
        raise ValueError("every request must list the same members (None where missing)")
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), (n, m))
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {np.asarray(weights)!r}")
    normalisation = options.normalisation or DEFAULT_NORMALISATION[strategy]
    if strategy == CONSENSUS:
        # Every similarity ignores how whitespace runs: chrF removes it, token F1 and
        # WER split at it. Collapsing it (the last step) would change no score and
        # costs more than the rest of the normalisation of long texts.
        normalisation = replace(normalisation, whitespace=False)
    normalised = [
        [None if t is None else normalise(t, normalisation) for t in row] for row in texts
    ]
    present = np.array([[t is not None for t in row] for row in texts], dtype=bool).reshape(n, m)
    raw = np.where(present, w, 0.0)
    total = raw.sum(axis=1) if m else np.zeros(n)
    if strategy == TEXT_VOTE:
        return [_vote(texts[r], normalised[r], raw[r]) if total[r] > 0 else None for r in range(n)]
    return _consensus(texts, normalised, present, raw, total, options.similarity)


def _vote(texts: Sequence[str | None], answers: Sequence[str | None], w: FloatArray) -> TextResult:
    """The weighted vote of one request (at least one present member of weight > 0)."""
    totals: dict[str, float] = {}
    for answer, weight in zip(answers, w, strict=True):
        if answer is not None:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    # dicts keep insertion order, i.e. the order of each answer's first voter: max()
    # returns the first of equal totals.
    winner = max(totals, key=totals.__getitem__)
    voters = [i for i, a in enumerate(answers) if a == winner]
    chosen = max(voters, key=lambda i: (w[i], -i))
    present_total = sum(float(x) for x, a in zip(w, answers, strict=True) if a is not None)
    chosen_text = texts[chosen]
    assert chosen_text is not None
    return TextResult(
        text=chosen_text,
        chosen=chosen,
        similarities=tuple(None if a is None else float(a == winner) for a in answers),
        agreement=totals[winner] / present_total,
        scores=tuple(None if a is None else totals[a] for a in answers),
    )


def _consensus(
    texts: Sequence[Sequence[str | None]],
    normalised: list[list[str | None]],
    present: np.ndarray[Any, np.dtype[np.bool_]],
    raw: FloatArray,
    total: FloatArray,
    similarity: str,
) -> list[TextResult | None]:
    """MBR selection for the whole batch: one similarity call for every request's
    present texts, then the scores as (n, m) arrays."""
    n, m = present.shape
    live = [r for r in range(n) if total[r] > 0]
    groups = [[t for t in normalised[r] if t is not None] for r in live]
    matrices = SIMILARITIES[similarity](groups)
    sims = np.zeros((n, m, m))
    full: list[bool] = np.asarray(present.all(axis=1)).tolist()
    for r, matrix in zip(live, matrices, strict=True):
        if full[r]:
            sims[r] = matrix
        else:
            index = np.flatnonzero(present[r])
            sims[r, index[:, None], index[None, :]] = matrix
    # sum_{j != i} w_j sim(i, j), summed in member order.
    # Both sums run over j in member order (not total - w_i, which rounds differently).
    evidence = np.zeros((n, m))
    others = np.zeros((n, m))
    for j in range(m):
        contribution = raw[:, j][:, None] * sims[:, :, j]
        contribution[:, j] = 0.0
        evidence += contribution
        weight = np.broadcast_to(raw[:, j][:, None], (n, m)).copy()
        weight[:, j] = 0.0
        others += weight
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(others > 0, evidence / np.where(others > 0, others, 1.0), 1.0)
    score = np.where(present, score, -np.inf)
    chosen = np.argmax(score, axis=1)  # the first of equal scores: model order
    # Per request, each member's similarity to the chosen text (1 for the chosen one):
    # whole-batch array steps; only the dot product (the summation order) stays per row.
    rows = np.arange(n)
    to_chosen = sims[rows, :, chosen]
    to_chosen[rows, chosen] = 1.0
    weighted = np.where(present, to_chosen, 0.0)
    similarities = to_chosen.tolist()
    scores = score.tolist()
    flags = present.tolist()
    out: list[TextResult | None] = [None] * n
    for r in live:
        c = int(chosen[r])
        agreement = float(np.dot(raw[r], weighted[r]) / total[r])
        chosen_text = texts[r][c]
        assert chosen_text is not None
        here = flags[r]
        out[r] = TextResult(
            text=chosen_text,
            chosen=c,
            similarities=tuple(
                x if p else None for x, p in zip(similarities[r], here, strict=True)
            ),
            agreement=min(1.0, agreement),
            scores=tuple(x if p else None for x, p in zip(scores[r], here, strict=True)),
        )
    return out
