"""The compiled n-gram kernel (worker/fusion/ngram_kernel.py) counts exactly what the
numpy counting (worker/fusion/ngram.py) counts, so chrF and token F1 are the same bit
for bit with and without numba; ``fusion-worker fuse`` writes the same bytes both ways;
without numba, or without a writable cache directory, the worker still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.fusion import ngram, overlaps
from worker.fusion.similarity import chrf_from_overlaps

pytest.importorskip("numba")

from worker.fusion import ngram_kernel

REPO = Path(__file__).resolve().parents[2]
# Characters that make every path of the kernel run: repeats (deep counts), shared
# n-grams, whitespace of every kind (removed), code points at and above 2**16 (the hash
# table at order 1) and a 4-byte emoji.
ALPHABET = "aab ab\t\n\u3000\x1c\u00e9\u6771\U0001f600\U00010000\uffff"
TEXT = st.text(st.sampled_from(ALPHABET), max_size=30)


def numpy_char_overlaps(groups: list[list[str]], order: int) -> list[np.ndarray]:
    return ngram.char_overlaps(groups, order)[1]


def assert_counts_equal_numpy(groups: list[list[str]]) -> None:
    """The kernel's overlaps of orders 1..6 and lengths equal the numpy counting's."""
    lengths, matches = overlaps.char_overlaps(groups, 6)
    want_lengths, want_matches = ngram.char_overlaps(groups, 6)
    for got, want in zip(matches, want_matches, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(lengths, want_lengths, strict=True):
        np.testing.assert_array_equal(got, want)


@given(st.lists(st.lists(TEXT, min_size=1, max_size=14), min_size=1, max_size=6))
@settings(max_examples=300)
def test_kernel_char_overlaps_equal_numpy(groups: list[list[str]]) -> None:
    """Every group's overlaps of orders 1..6 and its lengths are the numpy counting's,
    for groups of 1 to 14 texts."""
    assert_counts_equal_numpy(groups)


# ASCII only: the batch is then copied one byte per character (another compiled path),
# with every ASCII whitespace str.split() knows.
ASCII_TEXT = st.text(st.sampled_from("aab ab\t\n\r\x0b\x0c\x1c\x1d\x1e\x1fxyz."), max_size=30)


@given(st.lists(st.lists(ASCII_TEXT, min_size=1, max_size=14), min_size=1, max_size=6))
@settings(max_examples=200)
def test_kernel_ascii_char_overlaps_equal_numpy(groups: list[list[str]]) -> None:
    """ASCII-only batches (one byte per character) count what numpy counts."""
    assert_counts_equal_numpy(groups)


@given(
    st.lists(
        st.lists(st.one_of(TEXT, ASCII_TEXT), min_size=15, max_size=ngram_kernel.MAX_TEXTS),
        min_size=1,
        max_size=3,
    )
)
@settings(max_examples=40)
def test_kernel_large_groups_equal_numpy(groups: list[list[str]]) -> None:
    """Groups of 15 to MAX_TEXTS texts (every pair of texts counted) count what numpy
    counts, with empty texts and texts shorter than the order among them."""
    _, matches = overlaps.char_overlaps(groups, 6)
    for got, want in zip(matches, numpy_char_overlaps(groups, 6), strict=True):
        np.testing.assert_array_equal(got, want)


@given(st.lists(st.lists(st.lists(TEXT, max_size=8), min_size=1, max_size=14), max_size=5))
@settings(max_examples=200)
def test_kernel_token_overlaps_equal_numpy(groups: list[list[list[str]]]) -> None:
    """Token overlaps (token F1) are the numpy counting's."""
    got = overlaps.token_overlaps(groups)
    want = ngram.token_overlaps(groups)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def counted_on(count: int, groups: list[list[str]], token_groups: list[list[list[str]]]) -> Any:
    """The char overlaps (lengths, matches) and token overlaps, counted on ``count``
    threads; counting on the caller's thread again afterwards."""
    overlaps.set_threads(count)
    try:
        return overlaps.char_overlaps_padded(groups, 6), overlaps.token_overlaps(token_groups)
    finally:
        overlaps.set_threads(1)


@given(
    st.lists(st.lists(TEXT, min_size=1, max_size=12), min_size=1, max_size=7),
    st.lists(st.lists(st.lists(TEXT, max_size=6), min_size=1, max_size=8), max_size=5),
)
@settings(max_examples=100)
def test_counting_on_threads_gives_the_same_overlaps(
    groups: list[list[str]], token_groups: list[list[list[str]]]
) -> None:
    """``text_threads``: a batch's groups split over threads are counted as on one, for
    chrF (1 to 7 groups: fewer than, as many as and more than the threads) and tokens."""
    (lengths, matches), tokens = counted_on(3, groups, token_groups)
    (want_lengths, want_matches), want_tokens = counted_on(1, groups, token_groups)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_array_equal(matches, want_matches)
    for a, b in zip(tokens, want_tokens, strict=True):
        np.testing.assert_array_equal(a, b)


@given(st.lists(st.lists(TEXT, min_size=1, max_size=12), min_size=1, max_size=5))
@settings(max_examples=100)
def test_chrf_scores_are_bit_identical(groups: list[list[str]]) -> None:
    """chrF from the kernel's overlaps equals chrF from numpy's, bit for bit."""
    lengths, matches = overlaps.char_overlaps_padded(groups, 6)
    m = lengths.shape[1]
    want_matches = np.zeros_like(matches)
    for g, overlap in enumerate(numpy_char_overlaps(groups, 6)):
        want_matches[g, :, : overlap.shape[1], : overlap.shape[1]] = overlap
    got = chrf_from_overlaps(lengths, matches)
    want = chrf_from_overlaps(lengths, want_matches)
    assert got.tobytes() == want.tobytes()
    assert got.shape == (len(groups), m, m)


def test_groups_over_the_kernel_bound_are_counted_by_numpy() -> None:
    """A group of more than MAX_TEXTS texts takes the numpy path, with the same numbers."""
    group = [f"text {i % 5} and more" for i in range(ngram_kernel.MAX_TEXTS + 1)]
    got = overlaps.char_overlaps([group], 6)[1][0]
    np.testing.assert_array_equal(got, numpy_char_overlaps([group], 6)[0])


def test_heavy_repeats_and_short_texts_equal_numpy() -> None:
    """One character repeated thousands of times (a count far above the others), next
    to texts shorter than six characters, empty texts and a single-text group, in both
    the ASCII and the four-byte copies of the batch."""
    for extra in ("", "\U0001f600"):
        groups = [
            ["a" * 3000 + extra, "a" * 2999 + " b", "ab", "", "a" * 5, "ba" * 700],
            ["abcab" + extra],
            ["", ""],
        ]
        _, got = overlaps.char_overlaps(groups, 6)
        for a, b in zip(got, numpy_char_overlaps(groups, 6), strict=True):
            np.testing.assert_array_equal(a, b)


def test_long_repetitive_texts_equal_numpy() -> None:
    """Texts of thousands of characters with deep repeats (a count of hundreds in one
    text) and near-copies, as members' translations are."""
    rng = np.random.default_rng(5)
    words = ["the", "cat", "sat", "on", "a", "mat", "aaaa", "zzz", "é", "東京"]
    base = [words[i] for i in rng.integers(0, len(words), 600)]
    group = [" ".join(w for w in base if rng.random() > 0.05) for _ in range(10)]
    got = overlaps.char_overlaps([group, group[:3]], 6)[1]
    want = numpy_char_overlaps([group, group[:3]], 6)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=240,
        check=False,
    )


def test_without_a_writable_cache_the_kernel_compiles_and_warns() -> None:
    """When numba finds no cache directory (a read-only install without
    NUMBA_CACHE_DIR), the kernel still compiles and counts; the worker logs a warning."""
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from worker.fusion import overlaps, ngram_kernel\n"
        "assert ngram_kernel._UNCACHED, 'expected the uncached fallback'\n"
        "print(overlaps.char_overlaps([['ab ab', 'abc']], 2)[1][0].tolist())\n"
    )
    # numba's locator list, reduced to the IPython one, finds no place for a module.
    result = run_python(code, {"NUMBA_CACHE_LOCATOR_CLASSES": "_IPythonCacheLocator"})
    assert result.returncode == 0, result.stderr
    assert "no writable cache directory" in result.stderr
    assert result.stdout.strip() == "[[[4.0, 2.0], [2.0, 3.0]], [[3.0, 1.0], [1.0, 2.0]]]"


def test_without_numba_the_numpy_counting_serves() -> None:
    """With numba not importable, ``overlaps`` counts with numpy and says so."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from worker.fusion import overlaps\n"
        "assert not overlaps.kernel_available()\n"
        "assert overlaps.prepare() is False\n"
        "print(overlaps.char_overlaps([['ab ab', 'abc']], 2)[1][0].tolist())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[[4.0, 2.0], [2.0, 3.0]], [[3.0, 1.0], [1.0, 2.0]]]"


FUSE = (
    "import sys\n"
    "if sys.argv[1] == 'numpy': sys.modules['numba'] = None\n"
    "from worker.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("similarity", ["chrf", "token_f1"])
def test_fuse_writes_the_same_bytes_with_and_without_numba(tmp_path: Path, similarity: str) -> None:
    """``fusion-worker fuse`` on the text demo's events (consensus) writes the same file
    with the kernel as with the numpy counting."""
    from worker.demo_text import main as write_demo

    write_demo(["--out", str(tmp_path), "--quiet"])
    outputs = []
    for path in ("kernel", "numpy"):
        out = tmp_path / f"fused-{path}.jsonl"
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                FUSE,
                path,
                "fuse",
                "--config",
                str(tmp_path / "fusion-text.toml"),
                "--input",
                str(tmp_path / "events.jsonl"),
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "FUSION_FUSION__SIMILARITY": similarity},
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0]
    assert outputs[0] == outputs[1]
