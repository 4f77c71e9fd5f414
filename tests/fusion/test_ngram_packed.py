"""The packed-count overlaps (worker/fusion/ngram_packed.py) equal a direct count of the
character n-grams, for groups up to MASK_MAX_TEXTS texts, counts of every depth (the
histogram levels and the unpacked rows) and lanes of every width. Hypothesis with the
project's fixed seeds."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.fusion import ngram, ngram_packed
from worker.fusion.ngram_packed import DEEP, MASK_MAX_TEXTS

ORDER = 6
# Few letters, so that n-grams repeat within a text (counts up to and past DEEP) and
# across texts; spaces, since they are removed before counting.
SMALL = st.text(st.sampled_from("aab c"), max_size=40)


def direct(group: list[str], order: int = ORDER) -> np.ndarray:
    """(order, m, m) overlaps by Counter: sum over n-grams of min(count_i, count_j)."""
    stripped = ["".join(t.split()) for t in group]
    counters = [
        [Counter(s[k : k + n] for k in range(len(s) - n + 1)) for s in stripped]
        for n in range(1, order + 1)
    ]
    m = len(group)
    out = np.zeros((order, m, m))
    for n in range(order):
        for i in range(m):
            for j in range(m):
                a, b = counters[n][i], counters[n][j]
                out[n, i, j] = sum(min(c, b[g]) for g, c in a.items())
    return out


@given(st.lists(st.lists(SMALL, min_size=1, max_size=MASK_MAX_TEXTS), min_size=1, max_size=4))
@settings(max_examples=60)
def test_packed_overlaps_equal_a_direct_count(groups: list[list[str]]) -> None:
    """Every group's overlaps of orders 1..6 are the Counter min-sums."""
    _, matches = ngram.char_overlaps(groups, ORDER)
    for group, overlap in zip(groups, matches, strict=True):
        np.testing.assert_array_equal(overlap, direct(group))


@given(st.lists(st.lists(SMALL, min_size=1, max_size=MASK_MAX_TEXTS), min_size=1, max_size=4))
@settings(max_examples=40)
def test_packed_overlaps_equal_the_per_order_path(groups: list[list[str]]) -> None:
    """The packed counts give the same overlaps as counting one order at a time (the
    path of groups of more than MASK_MAX_TEXTS texts)."""
    packed = ngram.char_overlaps(groups, ORDER)[1]
    original = ngram.MASK_MAX_TEXTS
    ngram.MASK_MAX_TEXTS = 0  # every group takes the per-order path
    try:
        per_order = ngram.char_overlaps(groups, ORDER)[1]
    finally:
        ngram.MASK_MAX_TEXTS = original
    for a, b in zip(packed, per_order, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("length", [90, 200, 300, 5000])
def test_counts_of_every_lane_width(length: int) -> None:
    """Texts long enough that one n-gram's count needs 8 to 14 bits (wider lanes, fewer
    texts per word, up to three words for 12 texts) still count exactly, including
    counts far past DEEP."""
    assert length > DEEP
    group = ["a" * (length - 7 * i) + "ab" * i for i in range(MASK_MAX_TEXTS)]
    _, matches = ngram.char_overlaps([group], ORDER)
    np.testing.assert_array_equal(matches[0], direct(group))


def test_a_chunk_of_empty_texts_counts_nothing() -> None:
    """Groups whose texts are all empty or whitespace give zero overlaps."""
    _, matches = ngram.char_overlaps([["", " "], ["\t"]], ORDER)
    assert [m.shape for m in matches] == [(ORDER, 2, 2), (ORDER, 1, 1)]
    assert not any(m.any() for m in matches)


def test_the_whitespace_shortcut_knows_every_whitespace_character() -> None:
    """strip_whitespace's list holds exactly the characters str.split() splits at, but
    the space: every code point is checked."""
    spaces = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert set(ngram.OTHER_WHITESPACE) == spaces - {" "}
    assert len(ngram.OTHER_WHITESPACE) == len(spaces) - 1


@given(st.text(st.sampled_from("ab \t\n\x1c\x1f\x85\xa0\u2028\u3000\u200b")))
def test_strip_whitespace_equals_split_and_join(text: str) -> None:
    """strip_whitespace(t) is "".join(t.split()) (chrF's whitespace removal)."""
    assert ngram.strip_whitespace(text) == "".join(text.split())


def test_run_sums_survive_running_sums_that_wrap() -> None:
    """A run's packed counts are a difference of running sums mod 2**64: a running sum
    that wrapped past 2**64 still gives the exact counts, without a warning."""
    before = np.array([2**64 - 5, 3], dtype=np.uint64)  # 3 = (2**64 - 5) + 8 wrapped
    total = np.array([10], dtype=np.uint64)
    np.testing.assert_array_equal(ngram_packed._differences(before, total), [8, 7])
