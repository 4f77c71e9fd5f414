"""Backtest text metrics: corpus chrF equals sacrebleu's corpus_score, corpus WER equals
jiwer's, exact match with and without normalisation; member and strategy rows."""

from __future__ import annotations

import math

import jiwer
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import CHRF

from worker.backtest.text_metrics import (
    corpus_chrf,
    corpus_wer,
    exact_match,
    format_text_table,
    member_row,
    strategy_row,
)
from worker.fusion.textnorm import TextNormalisation

TOL = 1e-12
WORDS = ["the", "cat", "sat", "on", "a", "mat", "Mat.", "hat", "東京", "x"]
sentence = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)
nonempty = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


@given(st.lists(st.tuples(sentence, sentence), min_size=1, max_size=6))
@settings(max_examples=60)
def test_corpus_chrf_equals_sacrebleu(pairs: list[tuple[str, str]]) -> None:
    """corpus_chrf is sacrebleu's CHRF().corpus_score / 100, within 1e-12."""
    answers, references = [a for a, _ in pairs], [r for _, r in pairs]
    theirs = CHRF().corpus_score(answers, [references]).score / 100
    assert abs(corpus_chrf(answers, references) - theirs) <= TOL


@given(st.lists(st.tuples(sentence, nonempty), min_size=1, max_size=6))
def test_corpus_wer_equals_jiwer(pairs: list[tuple[str, str]]) -> None:
    """corpus_wer equals jiwer.wer on the two lists (references first), within 1e-12."""
    answers, references = [a for a, _ in pairs], [r for _, r in pairs]
    theirs = jiwer.wer(references, [a if a else "" for a in answers])
    assert abs(corpus_wer(answers, references) - theirs) <= TOL


def test_exact_match_with_and_without_normalisation() -> None:
    """Raw: "Paris." differs from "paris"; normalised (case, punctuation) they match."""
    assert exact_match(["Paris.", "Rome"], ["paris", "Rome"]) == 0.5
    assert exact_match(["Paris.", "Rome"], ["paris", "Rome"], TextNormalisation()) == 1.0
    assert math.isnan(exact_match([], []))


def test_rows_score_what_was_answered() -> None:
    """A member is scored on what it reported, a strategy on what it answered; the
    coverage says which share that is; the table prints both kinds."""
    refs = {"r1": "the cat sat", "r2": "on the mat", "r3": "a hat"}
    member = member_row("m1", {"r1": "the cat sat", "r3": "a cat"}, refs)
    assert (member.answered, member.coverage["reported"]) == (2, 2 / 3)
    assert member.metrics["exact_match"] == 0.5
    fused = strategy_row(
        "consensus",
        {
            "r1": ("complete", "the cat sat"),
            "r2": ("insufficient", None),
            "r3": ("partial", "a hat"),
        },
        refs,
    )
    assert fused.answered == 2
    assert fused.coverage == {"complete": 1 / 3, "partial": 1 / 3, "insufficient": 1 / 3}
    assert fused.metrics == {"exact_match": 1.0, "chrf": 1.0, "wer": 0.0}
    table = format_text_table([member, fused])
    assert "consensus" in table
    assert "chrF" in table
    assert "1.0000" in table
