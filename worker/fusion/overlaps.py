"""Which counting serves chrF and token F1: the compiled kernel or numpy (pure; no I/O).

``ngram_kernel`` (numba) counts the n-gram overlaps of each group in one pass per order;
``ngram`` counts them with numpy. Both give the same integers, so every score is the
same bit for bit whichever runs (tests/fusion/test_overlaps.py). The kernel runs when
numba imports (the ``kernel`` extra, in the dev install and the container image) and a
group has at most ``MAX_TEXTS`` texts; numpy otherwise, e.g. on a platform without numba
wheels or with ``NUMBA_DISABLE_JIT`` set (numba would then run the kernel as plain
Python, far slower than numpy).

``prepare()`` imports and compiles the kernel (numba compiles on first call: about
5-10 s on a small shared machine, a fraction of a second once numba's on-disk cache
holds it); a worker calls it at start, so that no request waits for it.

``prepare(threads=N)`` (``[fusion] text_threads``) splits a batch's groups over N
threads: the kernel releases the GIL, so they count on N cores at once. Each group is
counted alone whichever thread takes it, so the numbers are the same for any N.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import chain, pairwise
from types import ModuleType
from typing import Any

import numpy as np

from worker.fusion import ngram

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


class _Threads:
    """The threads that count a batch's groups (``prepare``); none: the caller's."""

    pool: ThreadPoolExecutor | None = None
    count = 1


def set_threads(count: int) -> None:
    """Count each batch's groups on ``count`` threads from now on (1: the caller's)."""
    if count == _Threads.count:
        return
    if _Threads.pool is not None:
        _Threads.pool.shutdown(wait=True)
    _Threads.pool = ThreadPoolExecutor(count, "ngram") if count > 1 else None
    _Threads.count = count


@cache
def _load() -> ModuleType | None:
    """The kernel module, or None when numba is missing or its JIT is disabled (asked
    once per process)."""
    try:
        import numba

        if getattr(numba.config, "DISABLE_JIT", False):
            raise ImportError("NUMBA_DISABLE_JIT is set")
        from worker.fusion import ngram_kernel
    except ImportError as exc:
        log.info("n-gram counting: numpy (the compiled kernel needs numba: %s)", exc)
        return None
    return ngram_kernel


def kernel_available() -> bool:
    """Whether the compiled kernel counts (numba installed, JIT not disabled)."""
    return _load() is not None


def prepare(threads: int = 1) -> bool:
    """Import and compile the kernel now, to count on ``threads`` threads; False (and
    nothing done) without numba. The two INFO lines around the compilation show what it
    took (no clock in the core)."""
    if _load() is None:
        return False
    set_threads(threads)
    log.info("n-gram counting: compiling the kernel (numba, cached on disk when it can)")
    char_overlaps([["warm up", "warm"]], 2)
    char_overlaps([["warm up \u2713", "warm"]], 2)
    token_overlaps([[["warm", "up"], ["warm"]]])
    log.info("n-gram counting: compiled kernel ready")
    return True


def _groups_fit(sizes: Sequence[int]) -> ModuleType | None:
    kernel = _load()
    if kernel is None or max(sizes, default=0) > kernel.MAX_TEXTS:
        return None
    return kernel


@cache
def _space_table() -> np.ndarray[Any, np.dtype[np.bool_]]:
    """table[min(c, table.size - 1)] is True for the code points c where ``str.split()``
    splits (its last entry is False, for every code point above the table)."""
    spaces = [ord(c) for c in ngram.OTHER_WHITESPACE + " "]
    table = np.zeros(max(spaces) + 2, dtype=np.bool_)
    table[spaces] = True
    return table


# Token ids hold no whitespace.
_NO_SPACE = np.zeros(1, dtype=np.bool_)


def _starts(lengths: Sequence[int] | IntArray) -> IntArray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


def char_overlaps_padded(
    groups: Sequence[Sequence[str]], max_order: int
) -> tuple[IntArray, FloatArray]:
    """The character n-gram overlaps of ``ngram.char_overlaps``, padded to the largest
    group: lengths (n_groups, m) and overlaps (n_groups, max_order, m, m), zeros past a
    group's own size."""
    sizes = [len(g) for g in groups]
    m = max(sizes, default=0)
    kernel = _groups_fit(sizes)
    if kernel is None:
        lengths, matches = ngram.char_overlaps(groups, max_order)
        all_lengths = np.zeros((len(sizes), m), dtype=np.int64)
        all_matches = np.zeros((len(sizes), max_order, m, m))
        for g, (n, mt) in enumerate(zip(lengths, matches, strict=True)):
            all_lengths[g, : n.size] = n
            all_matches[g, :, : n.size, : n.size] = mt
        return all_lengths, all_matches
    texts = [text for group in groups for text in group]
    text_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    joined = "".join(texts)
    # ASCII (a flag of the str, no scan) is copied as one byte per character; other
    # texts as four. Whitespace goes in the kernel, a pass per group in cache.
    if joined.isascii():
        codes = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    else:
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype="<u4")
    all_lengths = np.zeros((len(sizes), m), dtype=np.int64)
    out = np.zeros((len(sizes), max_order, m, m))
    _count(
        kernel,
        codes,
        _starts(text_lengths),
        _starts(sizes),
        _space_table(),
        (max_order, m),
        all_lengths,
        out,
    )
    return all_lengths, out


def _count(
    kernel: ModuleType,
    codes: np.ndarray[Any, Any],
    text_starts: IntArray,
    group_starts: IntArray,
    space: np.ndarray[Any, Any],
    shape: tuple[int, int],
    lengths: IntArray,
    out: FloatArray,
) -> None:
    """``overlaps_kernel`` over every group, split over the threads in contiguous runs
    of groups (each run's text starts are a slice, its group starts rebased to it; its
    results land in views of ``lengths`` and ``out``)."""
    max_order, m = shape
    n = group_starts.size - 1
    pool = _Threads.pool
    if pool is None or n < 2:
        kernel.overlaps_kernel(codes, text_starts, group_starts, space, max_order, m, lengths, out)
        return
    # At most n runs, so the cuts are at least one group apart: no run is empty.
    cuts = np.linspace(0, n, min(_Threads.count, n) + 1).astype(np.int64).tolist()
    runs = [
        pool.submit(
            kernel.overlaps_kernel,
            codes,
            text_starts[group_starts[a] : group_starts[b] + 1],
            group_starts[a : b + 1] - group_starts[a],
            space,
            max_order,
            m,
            lengths[a:b],
            out[a:b],
        )
        for a, b in pairwise(cuts)
    ]
    for run in runs:
        run.result()


def char_overlaps(
    groups: Sequence[Sequence[str]], max_order: int
) -> tuple[list[IntArray], list[FloatArray]]:
    """``ngram.char_overlaps`` (per group: lengths without whitespace (m_g,), overlaps
    (max_order, m_g, m_g)), by the kernel where it runs."""
    sizes = [len(g) for g in groups]
    if _groups_fit(sizes) is None:
        return ngram.char_overlaps(groups, max_order)
    lengths, matches = char_overlaps_padded(groups, max_order)
    return (
        [lengths[g, :s] for g, s in enumerate(sizes)],
        [matches[g, :, :s, :s] for g, s in enumerate(sizes)],
    )


def token_overlaps(groups: Sequence[Sequence[Sequence[str]]]) -> list[FloatArray]:
    """``ngram.token_overlaps`` (per group of token lists, the (m_g, m_g) multiset
    overlaps of the tokens), by the kernel where it runs."""
    sizes = [len(g) for g in groups]
    kernel = _groups_fit(sizes)
    if kernel is None:
        return ngram.token_overlaps(groups)
    flat = list(chain.from_iterable(chain.from_iterable(groups)))
    # Ids by first appearance, looked up in C: only their equality matters.
    vocabulary = {tok: i for i, tok in enumerate(dict.fromkeys(flat))}
    ids = np.fromiter(map(vocabulary.__getitem__, flat), dtype=np.uint32, count=len(flat))
    # Read-only like the code points of texts, so one compiled kernel serves both.
    ids.flags.writeable = False
    lengths = [len(tokens) for group in groups for tokens in group]
    m = max(sizes, default=0)
    out = np.zeros((len(sizes), 1, m, m))
    token_lengths = np.zeros((len(sizes), m), dtype=np.int64)
    _count(kernel, ids, _starts(lengths), _starts(sizes), _NO_SPACE, (1, m), token_lengths, out)
    return [out[g, 0, :s, :s] for g, s in enumerate(sizes)]
