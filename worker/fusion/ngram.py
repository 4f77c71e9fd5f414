"""Multiset overlaps of many small texts at once: the counting behind chrF and token F1.

For each group of texts (the members' answers to one request) and each pair (i, j) of
texts in the group, the overlap is ``sum over n-grams g of min(count_i(g), count_j(g))``
-- the "matches" of chrF (character n-grams) and of token F1 (tokens). Calling a metric
library per pair costs milliseconds per request; here a whole batch of groups costs one
sort and a few array passes per n-gram order:

- Every character gets a small id (1..A, 0 is "past the end of the text"); the n-gram
  starting at each position is packed, with its group above it and its text's slot in
  the group below it, into one unsigned 64-bit key. One ``np.sort`` of the keys of
  order ``max_order`` puts equal n-grams of every lower order next to each other too,
  since a lexicographic order groups equal prefixes; an n-gram runs past the end of its
  text exactly when its n-th character id is 0.
- ``min(a, b) = sum_k [a >= k][b >= k]``: each count row is expanded into 0/1 rows, so
  the overlap matrix of a group is ``B.T @ B`` -- one small matrix product per group and
  order.

Groups of up to MASK_MAX_TEXTS texts take the packed-count path of ``ngram_packed``
(the runs of every order from one running sum); larger groups are counted order by
order as above.

When the ids do not fit in 64 bits (an alphabet of more than ~1,000 distinct characters
in one batch, e.g. Chinese text), the groups are counted one at a time with ranks from
``np.unique`` instead: slower, the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from worker.fusion.ngram_packed import MASK_MAX_TEXTS, packed_overlaps

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
UIntArray = np.ndarray[Any, np.dtype[np.uint64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

_KEY_BITS = 64

# Whitespace other than the space itself: the characters c != " " with c.isspace(),
# where str.split() splits (a test checks every code point). Most texts (normalised
# ones always) have none, and for them removing the spaces is a replace, not a split
# into a list of words; a search for a character wider than the text's own is free.
OTHER_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def strip_whitespace(text: str) -> str:
    """``text`` without any whitespace: ``"".join(text.split())``, faster."""
    for char in OTHER_WHITESPACE:
        if char in text:
            return "".join(text.split())
    return text.replace(" ", "")


def _bits(count: int) -> int:
    """Bits that hold the values 0..count-1 (at least 1)."""
    return max(1, (count - 1).bit_length())


def _overlaps(
    prefix: UIntArray,
    change: BoolArray,
    slots: IntArray,
    m: int,
    group_shift: int,
    n_groups: int,
    last_char_mask: int = 0,
) -> FloatArray:
    """(n_groups, m, m) overlaps from sorted keys without their slot bits (``prefix``,
    equal n-grams adjacent, the group in the bits from ``group_shift`` up), the flags of
    the keys that start a new n-gram (``change``) and the slot of each key. With
    ``last_char_mask``, n-grams whose last character id is 0 (they run past the end of
    their text) are left out. Entries are exact integers held as floats."""
    out = np.zeros((n_groups, m, m))
    if prefix.size == 0:
        return out
    row = np.cumsum(change, dtype=np.int64) - 1
    n_rows = int(row[-1]) + 1
    counts = np.bincount(row * m + slots, minlength=n_rows * m).reshape(n_rows, m)
    row_prefix = prefix[change]
    if last_char_mask:
        keep = (row_prefix & np.uint64(last_char_mask)) != 0
        counts, row_prefix = counts[keep], row_prefix[keep]
        if not counts.shape[0]:
            return out
    row_group = (row_prefix >> np.uint64(group_shift)).astype(np.int64)
    # min(a, b) = sum_k [a >= k][b >= k]: a row whose largest count is c becomes c 0/1
    # rows (its counts >= 1, >= 2, ...), still in group order. Then the overlaps of a
    # group are B.T @ B over its contiguous block of rows (float32 sums of 0/1 products
    # are exact below 2**24).
    depth = counts.max(axis=1)
    if int(depth.max()) == 1:
        binary = counts.astype(np.float32)
        groups = row_group
    else:
        expanded = np.repeat(counts, depth, axis=0)
        level = np.arange(expanded.shape[0]) - np.repeat(np.cumsum(depth) - depth, depth)
        binary = (expanded > level[:, None]).astype(np.float32)
        groups = np.repeat(row_group, depth)
    bounds = np.searchsorted(groups, np.arange(n_groups + 1))
    for g in range(n_groups):
        lo, hi = bounds[g], bounds[g + 1]
        if hi > lo:
            block = binary[lo:hi]
            out[g] = block.T @ block
    return out


def _starts(prefix: UIntArray) -> BoolArray:
    """True where a sorted key differs from the one before it."""
    change = np.empty(prefix.size, dtype=bool)
    if prefix.size:
        change[0] = True
        np.not_equal(prefix[1:], prefix[:-1], out=change[1:])
    return change


def _group_layout(sizes: Sequence[int], lengths: IntArray) -> tuple[IntArray, IntArray]:
    """Group index and slot of each text, repeated over its characters."""
    text_group = np.repeat(np.arange(len(sizes)), sizes)
    text_slot = np.concatenate([np.arange(s) for s in sizes]) if sizes else np.zeros(0, np.int64)
    return np.repeat(text_group, lengths), np.repeat(text_slot, lengths)


# Groups are counted in chunks of about this many characters: the arrays of one chunk
# (~8 bytes per character, a few at a time) stay in the CPU caches; a whole batch at once
# measured about twice as slow per request.
CHUNK_CHARS = 1 << 17


def char_overlaps(
    groups: Sequence[Sequence[str]], max_order: int
) -> tuple[list[IntArray], list[FloatArray]]:
    """Character n-gram overlaps, whitespace removed (as chrF does).

    Returns, per group, the lengths of its texts without whitespace, shape (m_g,), and
    the overlaps of orders 1..max_order, shape (max_order, m_g, m_g).
    """
    out_lengths: list[IntArray] = []
    out_matches: list[FloatArray] = []
    start, chars = 0, 0
    for end, group in enumerate(groups, start=1):
        chars += sum(len(text) for text in group)
        if chars >= CHUNK_CHARS or end == len(groups):
            lengths, matches = _char_overlaps(groups[start:end], max_order)
            out_lengths.extend(lengths)
            out_matches.extend(matches)
            start, chars = end, 0
    return out_lengths, out_matches


def _char_overlaps(
    groups: Sequence[Sequence[str]], max_order: int
) -> tuple[list[IntArray], list[FloatArray]]:
    """``char_overlaps`` of one chunk of groups."""
    sizes = [len(g) for g in groups]
    stripped = [strip_whitespace(text) for g in groups for text in g]
    lengths = np.fromiter(map(len, stripped), dtype=np.int64, count=len(stripped))
    split_at = np.cumsum(sizes)[:-1]
    out_lengths = list(np.split(lengths, split_at)) if groups else []
    m = max(sizes, default=1)
    code_points = np.frombuffer("".join(stripped).encode("utf-32-le"), dtype="<u4")
    if code_points.size == 0:
        return out_lengths, [np.zeros((max_order, s, s)) for s in sizes]
    # Ids 1..A in code point order; 0 stays free for "past the end".
    seen = np.bincount(code_points) > 0
    table = np.cumsum(seen)
    ids = table[code_points].astype(np.uint64)
    alphabet = int(table[-1])
    char_bits = alphabet.bit_length()
    slot_bits = _bits(m)
    fixed = max_order * char_bits + slot_bits
    # Pad each text with max_order - 1 zeros so that n-grams stop at its end.
    pad = max_order - 1
    text_index = np.repeat(np.arange(lengths.size), lengths)
    padded = np.zeros(code_points.size + pad * lengths.size, dtype=np.uint64)
    real = np.arange(code_points.size) + pad * text_index
    padded[real] = ids
    char_group, char_slot = _group_layout(sizes, lengths)
    if fixed >= _KEY_BITS:
        by_rank = _char_overlaps_by_rank(
            padded, real, char_group, char_slot, sizes, max_order, char_bits
        )
        return out_lengths, by_rank
    # The n-gram at every position of the padded array by contiguous shifted slices,
    # then one gather of the positions that are characters.
    span = padded.size - pad
    every = padded[:span] << np.uint64(pad * char_bits)
    for k in range(1, max_order):
        every |= padded[k : k + span] << np.uint64((max_order - 1 - k) * char_bits)
    grams = every[real]
    per_chunk = min(1 << (_KEY_BITS - fixed), len(sizes))
    firsts = [*range(0, len(sizes), per_chunk), len(sizes)]
    group_starts = np.searchsorted(char_group, firsts)
    matches: list[FloatArray] = []
    for c, first in enumerate(firsts[:-1]):
        lo, hi = group_starts[c], group_starts[c + 1]
        n_groups = min(per_chunk, len(sizes) - first)
        keys = (
            ((char_group[lo:hi] - first).astype(np.uint64) << np.uint64(fixed))
            | (grams[lo:hi] << np.uint64(slot_bits))
            | char_slot[lo:hi].astype(np.uint64)
        )
        keys.sort()
        if m <= MASK_MAX_TEXTS:
            by_order = packed_overlaps(
                keys, m, slot_bits, char_bits, max_order, n_groups, int(lengths.max())
            )
        else:
            by_order = _overlaps_by_order(keys, m, slot_bits, char_bits, max_order, n_groups)
        matches.extend(
            by_order[g, :, : sizes[first + g], : sizes[first + g]] for g in range(n_groups)
        )
    return out_lengths, matches


def _overlaps_by_order(
    keys: UIntArray, m: int, slot_bits: int, char_bits: int, max_order: int, n_groups: int
) -> FloatArray:
    """(n_groups, max_order, m, m) overlaps of the sorted keys, one order at a time (for
    groups of more than MASK_MAX_TEXTS texts)."""
    slots = (keys & np.uint64((1 << slot_bits) - 1)).astype(np.int64)
    # Two keys share their n-gram iff they agree above bit slot_bits + (max_order-n)*b,
    # i.e. iff their XOR is below 2**that.
    differ = np.empty(keys.size, dtype=np.uint64)
    differ[0] = np.uint64(2**64 - 1)
    np.bitwise_xor(keys[1:], keys[:-1], out=differ[1:])
    by_order = np.zeros((n_groups, max_order, m, m))
    for n in range(1, max_order + 1):
        shift = slot_bits + (max_order - n) * char_bits
        by_order[:, n - 1] = _overlaps(
            keys >> np.uint64(shift),
            differ >= np.uint64(1 << shift),
            slots,
            m,
            n * char_bits,
            n_groups,
            last_char_mask=(1 << char_bits) - 1,
        )
    return by_order


def _char_overlaps_by_rank(
    padded: UIntArray,
    real: IntArray,
    char_group: IntArray,
    char_slot: IntArray,
    sizes: Sequence[int],
    max_order: int,
    char_bits: int,
) -> list[FloatArray]:
    """The large-alphabet path: per group and order, the n-grams ranked by np.unique
    (rank of the (n-1)-gram times the alphabet plus the n-th id), then counted alike."""
    out = []
    bounds = np.searchsorted(char_group, np.arange(len(sizes) + 1))
    base = np.uint64(1 << char_bits)
    for g, size in enumerate(sizes):
        lo, hi = bounds[g], bounds[g + 1]
        pos = real[lo:hi]
        slot = char_slot[lo:hi]
        result = np.zeros((max_order, size, size))
        if size == 0:
            out.append(result)
            continue
        width = np.uint64(size)
        rank = np.zeros(pos.size, dtype=np.uint64)
        alive = np.ones(pos.size, dtype=bool)
        for n in range(1, max_order + 1):
            nth = padded[pos + n - 1]
            alive &= nth != 0
            _, inverse = np.unique(rank * base + nth, return_inverse=True)
            rank = inverse.astype(np.uint64).reshape(-1)
            keys = np.sort(rank[alive] * width + slot[alive].astype(np.uint64))
            prefix = keys // width
            result[n - 1] = _overlaps(
                prefix, _starts(prefix), (keys % width).astype(np.int64), size, 63, 1
            )[0]
        out.append(result)
    return out


def token_overlaps(groups: Sequence[Sequence[Sequence[str]]]) -> list[FloatArray]:
    """Per group of token lists, the (m_g, m_g) multiset overlaps of the tokens."""
    sizes = [len(g) for g in groups]
    flat = list(chain.from_iterable(chain.from_iterable(groups)))
    # Ids by first appearance, looked up in C (map over dict.__getitem__): only their
    # equality matters.
    vocabulary = {tok: i for i, tok in enumerate(dict.fromkeys(flat))}
    ids = np.fromiter(map(vocabulary.__getitem__, flat), dtype=np.uint64, count=len(flat))
    lengths = np.fromiter((len(t) for g in groups for t in g), dtype=np.int64, count=sum(sizes))
    m = max(sizes, default=1)
    if not flat:
        return [np.zeros((s, s)) for s in sizes]
    token_bits = _bits(len(vocabulary))
    slot_bits = _bits(m)
    group_bits = _bits(len(sizes))
    if group_bits + token_bits + slot_bits > _KEY_BITS:  # pragma: no cover - 2**40 tokens
        raise ValueError("too many distinct tokens in one batch")
    group, slot = _group_layout(sizes, lengths)
    keys = (
        (group.astype(np.uint64) << np.uint64(token_bits + slot_bits))
        | (ids << np.uint64(slot_bits))
        | slot.astype(np.uint64)
    )
    keys.sort()
    slots = (keys & np.uint64((1 << slot_bits) - 1)).astype(np.int64)
    prefix = keys >> np.uint64(slot_bits)
    matrices = _overlaps(prefix, _starts(prefix), slots, m, token_bits, len(sizes))
    return [matrices[g, :s, :s] for g, s in enumerate(sizes)]
