"""Similarity of texts: chrF, token F1 and 1 - WER, for one pair or for every pair of
texts in many groups at once (pure; no I/O).

Definitions (each equals its reference implementation; tests/fusion/test_similarity.py
proves it with hypothesis to 1e-12):

- ``chrf(hypothesis, reference)``: sacrebleu's sentence-level chrF (``CHRF()`` with its
  defaults: character order 6, no word n-grams, beta 2, whitespace removed, case kept,
  effective-order averaging), divided by 100, so in [0, 1]. For every order n that both
  texts reach, precision and recall of the character n-grams; their means P and R over
  those orders; ``(1 + beta**2) P R / (beta**2 P + R)``, 0 when P + R is 0. Not
  symmetric: beta = 2 weighs recall of the reference higher.
- ``token_f1``: the F1 of the two bags of whitespace-separated tokens (the SQuAD answer
  metric): overlap / length for precision and recall; 1 when both are empty, 0 when one
  is. Symmetric.
- ``wer(hypothesis, reference)``: word error rate, the Levenshtein distance between the
  token lists (substitutions, deletions, insertions, each 1) over the reference's token
  count, as ``jiwer.wer``; tokens split at any whitespace. jiwer refuses an empty
  reference; here it gives 0 against an empty hypothesis and 1 otherwise. The
  similarity is ``max(0, 1 - wer)`` (1 - WER is below 0 when the hypothesis inserts
  more words than the reference has), so every similarity here is in [0, 1].

The matrix functions take groups of texts (one group per request) and return, per group,
the (m, m) matrix with ``[i, j] = similarity(hypothesis=texts[i], reference=texts[j])``.
chrF and token F1 count their n-grams for the whole batch at once (``overlaps``: the
compiled kernel, or numpy without numba, the same numbers); WER uses rapidfuzz's
bit-parallel Levenshtein on the token lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from worker.fusion import overlaps

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

CHRF_CHAR_ORDER = 6
CHRF_BETA = 2


def chrf_from_overlaps(lengths: IntArray, matches: FloatArray, beta: int = CHRF_BETA) -> FloatArray:
    """(..., m, m) chrF in [0, 1] from the texts' lengths without whitespace (..., m) and
    their character n-gram overlaps (..., order, m, m); [..., i, j] takes text i as the
    hypothesis. Leading dimensions are a batch of groups (texts of length 0 pad them).

    The arithmetic follows sacrebleu's ``CHRF._compute_f_score`` operation by operation
    (sums over the orders in order 1, 2, ...), so the numbers agree to the last bits.
    """
    order = matches.shape[-3]
    factor = beta**2
    shape = matches.shape[:-3] + matches.shape[-2:]
    sum_prec = np.zeros(shape)
    sum_rec = np.zeros(shape)
    effective = np.zeros(shape)
    for n in range(1, order + 1):
        count = np.maximum(lengths - n + 1, 0).astype(np.float64)
        hyp = count[..., :, None]
        ref = count[..., None, :]
        both = (hyp > 0) & (ref > 0)
        safe_hyp = np.where(both, hyp, 1.0)
        safe_ref = np.where(both, ref, 1.0)
        overlap = matches[..., n - 1, :, :]
        sum_prec += np.where(both, overlap / safe_hyp, 0.0)
        sum_rec += np.where(both, overlap / safe_ref, 0.0)
        effective += both
    with np.errstate(invalid="ignore", divide="ignore"):
        avg_prec = np.where(effective > 0, sum_prec / effective, 0.0)
        avg_rec = np.where(effective > 0, sum_rec / effective, 0.0)
        score = (1 + factor) * avg_prec * avg_rec
        score = score / (factor * avg_prec + avg_rec)
    result: FloatArray = np.where(avg_prec + avg_rec != 0, score, 0.0)
    return result


def chrf_matrices(groups: Sequence[Sequence[str]]) -> list[FloatArray]:
    """Per group of texts, the (m, m) chrF matrix (see ``chrf_from_overlaps``), all
    groups in one array pass (padded to the largest group)."""
    all_lengths, all_matches = overlaps.char_overlaps_padded(groups, CHRF_CHAR_ORDER)
    scores = chrf_from_overlaps(all_lengths, all_matches)
    return [scores[g, : len(group), : len(group)] for g, group in enumerate(groups)]


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence chrF of one pair, divided by 100."""
    return float(chrf_matrices([[hypothesis, reference]])[0][0, 1])


def tokens(text: str) -> list[str]:
    """The whitespace-separated tokens of ``text`` (any Unicode whitespace)."""
    return text.split()


def token_f1_matrices(groups: Sequence[Sequence[str]]) -> list[FloatArray]:
    """Per group of texts, the (m, m) token F1 matrix (symmetric)."""
    token_groups = [[tokens(t) for t in g] for g in groups]
    out = []
    for toks, overlap in zip(token_groups, overlaps.token_overlaps(token_groups), strict=True):
        n = np.array([len(t) for t in toks], dtype=np.float64)
        total = n[:, None] + n[None, :]
        # 2 p r / (p + r) with p = o / n_i, r = o / n_j is 2 o / (n_i + n_j).
        f1 = np.divide(2.0 * overlap, total, out=np.zeros_like(overlap), where=total > 0)
        f1[total == 0] = 1.0
        out.append(f1)
    return out


def token_f1(hypothesis: str, reference: str) -> float:
    """Token F1 of one pair."""
    return float(token_f1_matrices([[hypothesis, reference]])[0][0, 1])


def _wer_from_distances(distance: FloatArray, ref_lengths: FloatArray) -> FloatArray:
    safe = np.where(ref_lengths > 0, ref_lengths, 1.0)
    rate = distance / safe[None, :]
    empty_ref = np.broadcast_to(ref_lengths[None, :] == 0, rate.shape)
    out: FloatArray = np.where(empty_ref, (distance > 0).astype(np.float64), rate)
    return out


def wer_matrices(groups: Sequence[Sequence[str]]) -> list[FloatArray]:
    """Per group of texts, the (m, m) WER matrix, [i, j] = wer(texts[i], texts[j])."""
    out = []
    for group in groups:
        toks = [tokens(t) for t in group]
        distance = cdist(toks, toks, scorer=Levenshtein.distance, dtype=np.int64, workers=1)
        lengths = np.array([len(t) for t in toks], dtype=np.float64)
        out.append(_wer_from_distances(distance.astype(np.float64), lengths))
    return out


def wer(hypothesis: str, reference: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (see the module doc)."""
    hyp, ref = tokens(hypothesis), tokens(reference)
    distance = float(Levenshtein.distance(hyp, ref))
    if not ref:
        return 1.0 if hyp else 0.0
    return distance / len(ref)


def wer_similarity_matrices(groups: Sequence[Sequence[str]]) -> list[FloatArray]:
    """Per group, ``max(0, 1 - WER)`` for every pair."""
    return [np.maximum(1.0 - w, 0.0) for w in wer_matrices(groups)]


def prepare(similarity: str, threads: int = 1) -> None:
    """Compile what ``similarity`` counts with now (chrF and token F1: the n-gram
    kernel, counting on ``threads`` threads), so that the first request does not wait
    for it."""
    if similarity in ("chrf", "token_f1"):
        overlaps.prepare(threads)


# One table of similarity names: the strategies, the config check and the docs read it.
SIMILARITIES: dict[str, Callable[[Sequence[Sequence[str]]], list[FloatArray]]] = {
    "chrf": chrf_matrices,
    "token_f1": token_f1_matrices,
    "wer": wer_similarity_matrices,
}
