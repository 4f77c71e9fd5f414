"""The text similarities equal their reference implementations: chrF equals sacrebleu's
sentence_chrf, WER equals jiwer's, token F1 equals a direct Counter computation; the
batch matrices equal the pairwise functions; the large-alphabet path equals the fast
one. Hypothesis with the project's fixed seeds."""

from __future__ import annotations

from collections import Counter

import jiwer
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import CHRF

from worker.fusion import ngram
from worker.fusion.similarity import (
    SIMILARITIES,
    chrf,
    chrf_matrices,
    token_f1,
    token_f1_matrices,
    wer,
    wer_matrices,
)

TOL = 1e-12
SACREBLEU_CHRF = CHRF()  # char order 6, word order 0, beta 2, whitespace removed
# Words that share characters, so that n-grams of every order match now and then, with
# non-ASCII letters, repeated characters and punctuation.
WORDS = ["the", "then", "a", "aa", "cat", "cats", "sat", "on", "mat", "Ünï", "東京", "ok!", "..."]
SPACES = [" ", "  ", "\t", "\n", " \u3000"]
# str.split() also splits at the information separators U+001C..U+001F, which regex's \s
# (jiwer's RemoveWhiteSpace) does not count as whitespace; they are left out of the texts.
ANY_CHAR = st.characters(exclude_characters="\x1c\x1d\x1e\x1f")


@st.composite
def texts(draw: st.DrawFn, max_words: int = 12) -> str:
    """Words separated by any whitespace, sometimes with whitespace around."""
    word = st.sampled_from(WORDS) | st.text(ANY_CHAR, min_size=1, max_size=4)
    words = draw(st.lists(word, max_size=max_words))
    out = draw(st.sampled_from(["", " "]))
    for word in words:
        out += word + draw(st.sampled_from(SPACES))
    return out


def sacrebleu_chrf(hypothesis: str, reference: str) -> float:
    return float(SACREBLEU_CHRF.sentence_score(hypothesis, [reference]).score) / 100


@given(texts(), texts())
def test_chrf_equals_sacrebleu(hypothesis: str, reference: str) -> None:
    """chrf(h, r) is sacrebleu's sentence chrF / 100, within 1e-12."""
    assert abs(chrf(hypothesis, reference) - sacrebleu_chrf(hypothesis, reference)) <= TOL


@given(st.lists(texts(), min_size=1, max_size=6))
@settings(max_examples=40)
def test_chrf_matrix_equals_pairwise_sacrebleu(group: list[str]) -> None:
    """Every entry [i, j] of a group's matrix is sacrebleu's chrF of (texts[i], texts[j])."""
    matrix = chrf_matrices([group])[0]
    for i, h in enumerate(group):
        for j, r in enumerate(group):
            assert abs(matrix[i, j] - sacrebleu_chrf(h, r)) <= TOL


@given(st.lists(st.lists(texts(), min_size=1, max_size=4), min_size=1, max_size=5))
@settings(max_examples=40)
def test_a_batch_equals_its_groups_one_by_one(groups: list[list[str]]) -> None:
    """Counting many groups at once gives each group's own matrix."""
    together = chrf_matrices(groups)
    for group, matrix in zip(groups, together, strict=True):
        np.testing.assert_array_equal(matrix, chrf_matrices([group])[0])


@given(st.lists(st.lists(texts(), min_size=1, max_size=4), min_size=1, max_size=4))
@settings(max_examples=40)
def test_the_large_alphabet_path_equals_the_packed_one(groups: list[list[str]]) -> None:
    """The rank-based counting (alphabets too large to pack in 64 bits) gives the same
    overlaps as the packed keys."""
    fast = ngram.char_overlaps(groups, 6)
    original = ngram._KEY_BITS
    ngram._KEY_BITS = 8  # force the fallback for any alphabet
    try:
        slow = ngram.char_overlaps(groups, 6)
    finally:
        ngram._KEY_BITS = original
    for a, b in zip(fast[1], slow[1], strict=True):
        np.testing.assert_array_equal(a, b)


@given(st.lists(st.lists(texts(), min_size=1, max_size=4), min_size=1, max_size=6))
@settings(max_examples=30)
def test_chunks_of_groups_equal_one_pass(groups: list[list[str]]) -> None:
    """Counting the groups in small chunks gives the same overlaps as in one chunk."""
    whole = ngram.char_overlaps(groups, 6)
    original = ngram.CHUNK_CHARS
    ngram.CHUNK_CHARS = 5
    try:
        chunked = ngram.char_overlaps(groups, 6)
    finally:
        ngram.CHUNK_CHARS = original
    for a, b in zip(whole[1], chunked[1], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(whole[0], chunked[0], strict=True):
        np.testing.assert_array_equal(a, b)


def test_more_texts_than_the_mask_path_takes() -> None:
    """A group of 14 texts (over MASK_MAX_TEXTS) gives sacrebleu's chrF for every pair."""
    assert ngram.MASK_MAX_TEXTS < 14
    group = [" ".join(WORDS[i : i + 3 + i % 4]) for i in range(14)]
    matrix = chrf_matrices([group])[0]
    for i, h in enumerate(group):
        for j, r in enumerate(group):
            assert abs(matrix[i, j] - sacrebleu_chrf(h, r)) <= TOL


def test_chrf_of_a_chinese_text_uses_the_large_alphabet_path() -> None:
    """More than 1,000 distinct characters in one batch still give sacrebleu's chrF."""
    alphabet = "".join(chr(0x4E00 + i) for i in range(1500))
    hypothesis, reference = alphabet[::2] + alphabet[:40], alphabet[::3] + alphabet[:50]
    assert abs(chrf(hypothesis, reference) - sacrebleu_chrf(hypothesis, reference)) <= TOL


def jiwer_wer(hypothesis: str, reference: str) -> float:
    """jiwer's WER with its default word split, but at any whitespace (ours)."""
    split_anywhere = jiwer.Compose(
        [
            jiwer.RemoveWhiteSpace(replace_by_space=True),
            jiwer.RemoveMultipleSpaces(),
            jiwer.Strip(),
            jiwer.ReduceToListOfListOfWords(),
        ]
    )
    return float(
        jiwer.wer(
            reference,
            hypothesis,
            reference_transform=split_anywhere,
            hypothesis_transform=split_anywhere,
        )
    )


@given(texts(), texts().filter(lambda t: bool(t.split())))
def test_wer_equals_jiwer(hypothesis: str, reference: str) -> None:
    """wer(h, r) equals jiwer.wer(reference=r, hypothesis=h), within 1e-12."""
    assert abs(wer(hypothesis, reference) - jiwer_wer(hypothesis, reference)) <= TOL


@given(
    st.lists(st.sampled_from(WORDS), max_size=10).map(" ".join),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=10).map(" ".join),
)
def test_wer_equals_jiwer_defaults_on_space_separated_words(
    hypothesis: str, reference: str
) -> None:
    """On words separated by single spaces, jiwer's default transform agrees too."""
    assert abs(wer(hypothesis, reference) - jiwer.wer(reference, hypothesis)) <= TOL


def test_wer_of_an_empty_reference() -> None:
    """jiwer refuses an empty reference; here it is 0 against nothing, else 1."""
    assert wer("", "  ") == 0.0
    assert wer("a b", "") == 1.0


@given(st.lists(texts(), min_size=1, max_size=5))
@settings(max_examples=40)
def test_wer_matrix_equals_pairwise(group: list[str]) -> None:
    """[i, j] of the WER matrix is wer(texts[i], texts[j])."""
    matrix = wer_matrices([group])[0]
    for i, h in enumerate(group):
        for j, r in enumerate(group):
            assert abs(matrix[i, j] - wer(h, r)) <= TOL


def counter_f1(hypothesis: str, reference: str) -> float:
    """The SQuAD answer F1 on whitespace tokens, written out with Counters."""
    h, r = hypothesis.split(), reference.split()
    if not h or not r:
        return float(h == r)
    common = sum((Counter(h) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(h), common / len(r)
    return 2 * precision * recall / (precision + recall)


@given(st.lists(texts(), min_size=1, max_size=5))
@settings(max_examples=60)
def test_token_f1_equals_the_counter_definition(group: list[str]) -> None:
    """Every entry of the token F1 matrix equals the Counter computation."""
    matrix = token_f1_matrices([group])[0]
    for i, h in enumerate(group):
        for j, r in enumerate(group):
            assert abs(matrix[i, j] - counter_f1(h, r)) <= TOL
    assert token_f1(group[0], group[-1]) == pytest.approx(counter_f1(group[0], group[-1]))


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_every_similarity_is_in_the_unit_interval(name: str) -> None:
    """All similarities lie in [0, 1] and a text is fully similar to itself."""
    group = ["a b c", "a b c d e f g h", "x", "c b a a a a a a a a a a"]
    matrix = SIMILARITIES[name]([group])[0]
    assert np.all((matrix >= 0) & (matrix <= 1))
    np.testing.assert_array_equal(np.diag(matrix), 1.0)
