"""Character n-gram overlaps of groups of at most ``MASK_MAX_TEXTS`` texts, from one sort.

The input is the sorted array of keys that ``ngram`` builds: per character position of
every text, ``group | n-gram of the longest order | slot`` (the text's index in its
group). Equal n-grams of every order are then adjacent, and the runs of order n are
unions of adjacent runs of order n + 1.

Each run carries its count per text, packed: ``lane`` bits per text, several texts per
unsigned 64-bit word. A run's packed counts are the difference of two running sums over
the keys (mod 2**64; exact, since no lane of a true count overflows: a count is at most
its text's length), so the runs of every order cost two lookups each, not a pass over
the keys per order. From the packed counts, SWAR (a few integer operations on the whole
word) gives per run the mask of the texts whose count is at least k, and then:

- ``overlap[i, j] = sum over n-grams of min(count_i, count_j) = sum_k [count_i >= k]
  [count_j >= k]``: each run adds one mask per level k; a histogram of (group, mask)
  times the table of which pairs each mask holds gives every group's matrix at once;
- runs with a count of ``DEEP`` or more in some text (frequent characters at low
  orders) are unpacked and their ``min`` taken directly, so that the levels stay few.

No Python loop per group or per run: a fixed number of array passes per order.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
UIntArray = np.ndarray[Any, np.dtype[np.uint64]]
Float32Array = np.ndarray[Any, np.dtype[np.float32]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

# Groups of up to this many texts go through the mask histogram (2**m bins per group).
MASK_MAX_TEXTS = 12
# A run with a count of at least DEEP in some text is unpacked; below it, its levels
# 1 .. DEEP - 1 go into the histogram.
DEEP = 4
_U = np.uint64


@cache
def pairs_of_masks(m: int) -> Float32Array:
    """(2**m, m*m): entry [mask, i*m + j] is 1 when bits i and j are both set (float32:
    its products with counts below 2**24 are exact)."""
    bits = (np.arange(1 << m)[:, None] >> np.arange(m)[None, :]) & 1
    table: Float32Array = (
        (bits[:, :, None] & bits[:, None, :]).reshape(1 << m, m * m).astype(np.float32)
    )
    return table


class _Lanes:
    """The packing of m counts below 2**(lane - 1) into 64-bit words, and the SWAR
    operations on it. The top bit of each lane stays free, so that adding
    ``2**(lane-1) - k`` to a lane sets that bit exactly when the count is >= k."""

    def __init__(self, m: int, max_count: int) -> None:
        self.m = m
        self.lane = max(max_count.bit_length() + 1, 8)
        # The squeeze below moves lane i's top bit to bit lane*per_word - 1 + i, which
        # must stay within 64 bits.
        self.per_word = 65 // (self.lane + 1)
        self.n_words = -(-m // self.per_word)
        ones = sum(1 << (self.lane * i) for i in range(self.per_word))
        self.top_bits = _U(ones << (self.lane - 1))
        self.below = [_U(((1 << (self.lane - 1)) - k) * ones) for k in range(DEEP + 1)]
        # Multiplying the top bits by this puts lane i's at bit 64 - per_word + i: every
        # partial product lands on a distinct bit (no carry disturbs them) and only
        # lane i's own lands in that window; those above bit 63 fall off.
        spare = 64 - self.per_word * (self.lane + 1) + 1
        self.squeeze = _U(
            sum(
                1 << ((self.per_word - 1 - j) * self.lane + j + spare) for j in range(self.per_word)
            )
            % (1 << 64)
        )
        self.squeezed = _U(64 - self.per_word)
        units = np.zeros((self.n_words, m), dtype=np.uint64)
        for slot in range(m):
            units[slot // self.per_word, slot] = 1 << (self.lane * (slot % self.per_word))
        self.units = units

    def at_least(self, words: list[UIntArray], k: int) -> IntArray:
        """Per row, the mask of the slots whose count is >= k (1 <= k <= DEEP)."""
        out = (((words[0] + self.below[k]) & self.top_bits) * self.squeeze) >> self.squeezed
        for w in range(1, len(words)):
            top = ((words[w] + self.below[k]) & self.top_bits) * self.squeeze
            out |= (top >> self.squeezed) << _U(w * self.per_word)
        masks: IntArray = out.view(np.int64)
        return masks

    def any_at_least(self, words: list[UIntArray], k: int) -> BoolArray:
        """Per row, whether some slot's count is >= k."""
        hit: BoolArray = ((words[0] + self.below[k]) & self.top_bits) != 0
        for x in words[1:]:
            hit |= ((x + self.below[k]) & self.top_bits) != 0
        return hit

    def unpack(self, words: list[UIntArray]) -> IntArray:
        """(rows, m) counts."""
        shifts = (self.lane * np.arange(self.per_word)).astype(np.uint64)
        lane_mask = _U((1 << self.lane) - 1)
        parts = [(x[:, None] >> shifts) & lane_mask for x in words]
        counts: IntArray = np.concatenate(parts, axis=1)[:, : self.m].astype(np.int64)
        return counts


def _differences(before: UIntArray, total: UIntArray) -> UIntArray:
    """Each run's sum from the running sums before each run and the grand total (shape
    (1,): array arithmetic wraps mod 2**64 without a warning, as the sums may)."""
    out = np.empty_like(before)
    np.subtract(before[1:], before[:-1], out=out[:-1])
    np.subtract(total, before[-1:], out=out[-1:])
    return out


def packed_overlaps(
    keys: UIntArray,
    m: int,
    slot_bits: int,
    char_bits: int,
    max_order: int,
    n_groups: int,
    max_count: int,
) -> FloatArray:
    """Overlaps of orders 1..max_order, shape (n_groups, max_order, m, m), from the sorted
    ``keys`` (``group << (max_order*char_bits + slot_bits) | n-gram << slot_bits |
    slot``, character id 0 past a text's end); ``max_count``: a bound on any n-gram's
    count in one text (e.g. the longest text's length). Entries are exact integers."""
    if keys.size == 0:
        return np.zeros((n_groups, max_order, m, m))
    lanes = _Lanes(m, max_count)
    slots = (keys & _U((1 << slot_bits) - 1)).astype(np.int64)
    differ = np.empty(keys.size, dtype=np.uint64)
    differ[0] = _U(2**64 - 1)
    np.bitwise_xor(keys[1:], keys[:-1], out=differ[1:])
    # Two keys share their n-gram iff their XOR is below 2**(bits under the n-gram).
    starts = np.flatnonzero(differ >= _U(1 << slot_bits))
    before: list[UIntArray] = []
    totals: list[UIntArray] = []
    for w in range(lanes.n_words):
        running = np.cumsum(lanes.units[w][slots])
        totals.append(running[-1:])
        before.append(np.concatenate([np.zeros(1, np.uint64), running[starts[1:] - 1]]))
    heads = keys[starts]
    steps = differ[starts]
    last_char = _U((1 << char_bits) - 1)
    group_shift = _U(max_order * char_bits + slot_bits)
    group_ids = np.arange(n_groups)[:, None]
    hist = np.zeros((max_order, n_groups << m), dtype=np.float32)
    direct = np.zeros((max_order, n_groups, m * m), dtype=np.float32)
    for n in range(max_order, 0, -1):
        shift = _U(slot_bits + (max_order - n) * char_bits)
        if n < max_order:
            first = np.flatnonzero(steps >= _U(1) << shift)
            before = [b[first] for b in before]
            heads, steps = heads[first], steps[first]
        words = [_differences(b, t) for b, t in zip(before, totals, strict=True)]
        # An n-gram runs past its text's end when its n-th character id is 0.
        valid = ((heads >> shift) & last_char) != 0
        entry = (heads >> group_shift).astype(np.int64) << m
        repeated = lanes.any_at_least(words, 2)
        parts = [(entry | lanes.at_least(words, 1))[valid & ~repeated]]
        repeated &= valid
        if repeated.any():
            sub = [x[repeated] for x in words]
            sub_entry = entry[repeated]
            deep = lanes.any_at_least(sub, DEEP)
            shallow = [x[~deep] for x in sub]
            for k in range(1, DEEP):
                parts.append(sub_entry[~deep] | lanes.at_least(shallow, k))
            if deep.any():
                counts = lanes.unpack([x[deep] for x in sub])
                mins = np.minimum(counts[:, :, None], counts[:, None, :]).reshape(-1, m * m)
                owner = ((sub_entry[deep] >> m)[None, :] == group_ids).astype(np.float32)
                direct[n - 1] = owner @ mins.astype(np.float32)
        hist[n - 1] = np.bincount(np.concatenate(parts), minlength=n_groups << m)
    pairs = hist.reshape(max_order * n_groups, 1 << m) @ pairs_of_masks(m)
    pairs += direct.reshape(max_order * n_groups, m * m)
    out: FloatArray = (
        pairs.reshape(max_order, n_groups, m, m).transpose(1, 0, 2, 3).astype(np.float64)
    )
    return out
