"""The compiled n-gram counting behind chrF and token F1 (numba; pure, no I/O).

It computes what ``ngram`` computes with numpy -- per group of texts, per order n and
per pair (i, j), ``sum over n-grams g of min(count_i(g), count_j(g))`` -- with a pass
over each group's characters per order, where numpy sorts the whole batch and makes
about a hundred array passes. The results are integers, so both give the same numbers
bit for bit (tests/fusion/test_overlaps.py compares them).

Per group and order, every n-gram gets a small id, from exact keys (never a hash of
the text alone, so two n-grams share an id iff they are equal): order 1 from its code
point, in the same pass over the group's code points that drops whitespace; order n
from (the id of its (n-1)-gram prefix, the id of its last character), looked up in a
plain array while (prefixes x characters) is small (orders 2 and 3 of most texts),
else as the prefix's first or second continuation (where the texts agree, most of
them) and then in an open-addressing hash table. Each text's count per id goes into a
text-major table. Then, per order:

- an n-gram whose (n-1)-gram prefix occurs once in the whole group occurs once too: it
  skips the lookups (a text's overlap with itself is its count of n-grams);
- per pair of texts, one vectorised pass over the ids sums the minima of their counts
  (32-bit lanes); the texts' counts summed per id mark the n-grams that occur once.

This module imports numba; ``overlaps`` imports it only when numba is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

log = logging.getLogger(__name__)

# Larger groups are counted by numpy (the pairs grow as the square of the texts).
MAX_TEXTS = 31
# Orders where (distinct (n-1)-grams) x (distinct characters) stay below this number
# index a plain array by the pair instead of hashing it.
_DENSE_SLOTS = 1 << 16
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# The functions compiled without the on-disk cache (no writable cache directory).
_UNCACHED: list[str] = []


def _jit(func: Callable[..., Any]) -> Any:
    """``numba.njit`` with numba's on-disk cache of the machine code (beside this
    module, or in NUMBA_CACHE_DIR); where no cache directory is writable (a read-only
    install without NUMBA_CACHE_DIR), without it: each start then compiles again (5-10 s
    on a small shared machine), which is logged as a warning, never an error."""
    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError as exc:  # numba: "cannot cache function ...: no locator available"
        if not _UNCACHED:
            log.warning(
                "n-gram kernel: no writable cache directory, compiled at each start: %s", exc
            )
        _UNCACHED.append(func.__name__)
        return numba.njit(cache=False, nogil=True)(func)


@_jit
def _find(keys: Any, values: Any, used: Any, shift: Any, key: int, new_id: int) -> int:
    """The id of ``key`` in the open-addressing table (keys, values); a key not in it
    gets ``new_id``, and its slot is listed in ``used[1:]`` (``used[0]`` slots so far)
    for the clearing."""
    slot_mask = np.uint64(keys.size - 1)
    slot = (np.uint64(key) * _GOLDEN) >> shift
    while True:
        found = keys[slot]
        if found == key:
            return values[slot]  # type: ignore[no-any-return]
        if found == -1:
            keys[slot] = key
            values[slot] = new_id
            used[0] += 1
            used[used[0]] = slot
            return new_id
        slot = (slot + np.uint64(1)) & slot_mask


@_jit
def overlaps_kernel(
    codes: Any,
    text_starts: Any,
    group_starts: Any,
    space: Any,
    max_order: int,
    m: int,
    lengths: Any,
    out: Any,
) -> None:
    """Fill ``lengths`` (n_groups, m) with each text's length without whitespace and
    ``out`` (n_groups, max_order, m, m), zeros on entry, with the overlaps of each
    group's texts. ``codes``: the code points (uint8 for ASCII, else uint32), or token
    ids with max_order 1, of all texts one after the other; text t is
    ``codes[text_starts[t]:text_starts[t+1]]`` and group g holds texts
    ``group_starts[g] .. group_starts[g+1] - 1``; at most MAX_TEXTS texts per group.
    ``space[min(c, space.size - 1)]`` is true for the whitespace code points c, which
    are removed (its last entry is false; ``[False]`` for token ids). Positions, ids
    and tables are 32-bit: half the cache lines of 64-bit ones."""
    n_groups = group_starts.size - 1
    longest = 1
    for g in range(n_groups):
        longest = max(longest, text_starts[group_starts[g + 1]] - text_starts[group_starts[g]])
    bits = 4
    while (1 << bits) < 2 * longest:
        bits += 1
    # Hash table of the n-grams that are not a prefix's first continuation.
    keys = np.full(1 << bits, -1, dtype=np.int64)
    values = np.zeros(1 << bits, dtype=np.int64)
    used = np.zeros(longest + 1, dtype=np.int64)
    shift = np.uint64(64 - bits)
    # Order 1: the id of each code point below 2**16 directly (-2: whitespace, which
    # is below 2**16), the others in the table.
    root = np.full(1 << 16, -1, dtype=np.int64)
    for code in range(space.size):
        if space[code]:
            root[code] = -2
    root_code = np.zeros(longest, dtype=np.int32)
    first_ids = np.zeros(longest, dtype=np.int32)
    dense_ids = np.full(_DENSE_SLOTS, -1, dtype=np.int32)
    dense_used = np.zeros(longest, dtype=np.int32)
    # counts[t * longest + id]: text-major, so a text's pass walks its ids in order.
    counts = np.zeros(m * longest, dtype=np.int32)
    single = np.zeros(longest, dtype=np.bool_)
    child_code = np.full(longest, -1, dtype=np.int32)
    child_id = np.zeros(longest, dtype=np.int32)
    second_code = np.full(longest, -1, dtype=np.int32)
    second_id = np.zeros(longest, dtype=np.int32)
    prev = np.zeros(longest, dtype=np.int32)
    cur = np.zeros(longest, dtype=np.int32)
    pairs = np.zeros((m, m), dtype=np.int64)
    starts = np.zeros(m + 1, dtype=np.int64)
    total = np.zeros(longest, dtype=np.int32)
    for g in range(n_groups):
        t0 = group_starts[g]
        size = group_starts[g + 1] - t0
        # Order 1 and whitespace in one pass over the group's code points: each
        # character's id (-2: whitespace, dropped without a branch) and its count.
        n_codes = 0
        n_first = 0
        for t in range(size):
            starts[t] = n_codes
            text_counts = counts[t * longest : (t + 1) * longest]
            for p in range(text_starts[t0 + t], text_starts[t0 + t + 1]):
                code = codes[p]
                gram = root[code] if code < 65536 else -1
                if gram == -1:
                    gram = n_first
                    if code < 65536:
                        root[code] = gram
                    else:
                        gram = _find(keys, values, used, shift, code, n_first)
                    if gram == n_first:
                        root_code[gram] = code
                        n_first += 1
                keep = gram >= 0
                cur[n_codes] = gram
                text_counts[max(gram, 0)] += keep
                n_codes += keep
            lengths[g, t] = n_codes - starts[t]
        starts[size] = n_codes
        n_prev = 0
        n_chars = 0
        for n in range(1, max_order + 1):
            pairs[:size, :size] = 0
            n_ids = n_first if n == 1 else 0
            dense = n > 1 and n_prev * n_chars <= _DENSE_SLOTS
            for t in range(size):
                lo = starts[t]
                hi = starts[t + 1]
                text_counts = counts[t * longest : (t + 1) * longest]
                # Order 1 is counted above.
                if dense:
                    # Few (n-1)-grams and characters: one slot per pair of them.
                    for p in range(lo, hi - n + 1):
                        parent = prev[p]
                        if parent < 0 or single[parent]:
                            # Its prefix occurs once in the group: so does it.
                            cur[p] = -1
                            continue
                        key = parent * n_chars + first_ids[p + n - 1]
                        gram = dense_ids[key]
                        if gram < 0:
                            gram = n_ids
                            dense_ids[key] = gram
                            dense_used[gram] = key
                            n_ids += 1
                        cur[p] = gram
                        text_counts[gram] += 1
                elif n > 1:
                    # Most prefixes have one or two continuations in the group (the
                    # texts agree there): looked up directly, the other ones hashed.
                    for p in range(lo, hi - n + 1):
                        parent = prev[p]
                        if parent < 0 or single[parent]:
                            cur[p] = -1
                            continue
                        code = first_ids[p + n - 1]
                        first = child_code[parent]
                        if first == code:
                            gram = child_id[parent]
                        elif first == -1:
                            child_code[parent] = code
                            child_id[parent] = n_ids
                            gram = n_ids
                            n_ids += 1
                        elif second_code[parent] == code:
                            gram = second_id[parent]
                        elif second_code[parent] == -1:
                            second_code[parent] = code
                            second_id[parent] = n_ids
                            gram = n_ids
                            n_ids += 1
                        else:
                            key = np.int64(parent) * n_chars + code
                            gram = _find(keys, values, used, shift, key, n_ids)
                            if gram == n_ids:
                                n_ids += 1
                        cur[p] = gram
                        text_counts[gram] += 1
                # A text's overlap with itself: its count of n-grams.
                pairs[t, t] = max(0, hi - lo - n + 1)
            for h in range(1, used[0] + 1):
                keys[used[h]] = -1
            used[0] = 0
            child_code[:n_prev] = -1
            second_code[:n_prev] = -1
            if n == 1:
                for gram in range(n_ids):
                    if root_code[gram] < 65536:
                        root[root_code[gram]] = -1
                n_chars = n_ids
                first_ids[:n_codes] = cur[:n_codes]
            if dense:
                for gram in range(n_ids):
                    dense_ids[dense_used[gram]] = -1
            # Per pair of texts, one vectorised pass over the ids, 32-bit lanes (a sum
            # of minima never exceeds the text's length); the totals mark the n-grams
            # that occur once in the group, whose continuations then skip the lookups.
            total[:n_ids] = 0
            for i in range(size):
                ci = counts[i * longest : i * longest + n_ids]
                total[:n_ids] += ci
                for j in range(i + 1, size):
                    cj = counts[j * longest : j * longest + n_ids]
                    s = np.int32(0)
                    for gram in range(n_ids):
                        s = np.int32(s + min(ci[gram], cj[gram]))
                    pairs[i, j] += s
            for gram in range(n_ids):
                single[gram] = total[gram] == 1
            for t in range(size):
                counts[t * longest : t * longest + n_ids] = 0
            for i in range(size):
                out[g, n - 1, i, i] = pairs[i, i]
                for j in range(i + 1, size):
                    out[g, n - 1, i, j] = pairs[i, j]
                    out[g, n - 1, j, i] = pairs[i, j]
            prev, cur = cur, prev
            n_prev = n_ids
