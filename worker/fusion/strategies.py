"""The fusion strategies as array functions over a whole batch of requests.

Shapes: n requests, m configured members, k labels. Missing members carry weight 0
(and are excluded from the order statistics), so one call fuses every request of a
batch, whatever subset of members each one has. Weighted sums run over the members in
configured order, as ``np.average`` and ``np.bincount`` do, so that the results equal
scikit-learn's ``VotingClassifier`` / ``VotingRegressor`` bit for bit on complete
requests, ties included.
"""

from __future__ import annotations

import numpy as np

from worker.fusion.batch import BoolArray, FloatArray, IntArray


def masked_weights(present: BoolArray, weights: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The configured ``weights`` (m,) of the members present: (n, m), 0 where missing;
    and their sum per request, (n,)."""
    raw: FloatArray = np.where(present, weights, 0.0)
    total = raw[:, 0].copy()
    for j in range(1, raw.shape[1]):
        total += raw[:, j]
    return raw, total


def normalised(raw: FloatArray, total: FloatArray) -> FloatArray:
    """Weights renormalised over the members present, (n, m); rows without weight are 0."""
    out = np.zeros_like(raw)
    np.divide(raw, total[:, None], out=out, where=total[:, None] > 0)
    return out


def _weighted_sum(values: FloatArray, weights: FloatArray) -> FloatArray:
    """sum_j weights[:, j] * values[:, j], in member order; values (n, m) or (n, m, k)."""
    w = weights if values.ndim == 2 else weights[:, :, None]
    acc: FloatArray = w[:, 0] * values[:, 0]
    for j in range(1, values.shape[1]):
        acc += w[:, j] * values[:, j]
    return acc


def weighted_average_probs(probs: FloatArray, raw: FloatArray, total: FloatArray) -> FloatArray:
    """(n, k): the weighted mean of the members' probabilities, as ``np.average``
    (weighted sum, then divided by the weight present)."""
    acc = _weighted_sum(probs, raw)
    out = np.zeros_like(acc)
    np.divide(acc, total[:, None], out=out, where=total[:, None] > 0)
    return out


def weighted_average_scores(scores: FloatArray, weights: FloatArray) -> FloatArray:
    """(n,): the weighted mean of the members' scores. ``weights`` are the renormalised
    ones, so that no intermediate sum can overflow a double."""
    return _weighted_sum(scores, weights)


def hard_vote(member_labels: IntArray, raw: FloatArray, n_labels: int) -> FloatArray:
    """(n, k): each label's weighted vote count, as ``np.bincount(labels, weights)``.

    ``argmax`` of the counts is the fused label: on a tie the lowest label index wins,
    as in scikit-learn's VotingClassifier.
    """
    classes = np.arange(n_labels)
    counts = np.zeros((member_labels.shape[0], n_labels))
    for j in range(member_labels.shape[1]):
        counts += raw[:, j, None] * (member_labels[:, j, None] == classes)
    return counts


def geometric_mean(probs: FloatArray, weights: FloatArray, floor: float) -> FloatArray:
    """(n, k): log-linear pooling, p ~ prod_j max(p_j, floor) ** w_j, renormalised.

    ``weights`` are the renormalised ones. The floor keeps one member's 0 from vetoing a
    label outright (and keeps log finite).
    """
    log_pool = _weighted_sum(np.log(np.maximum(probs, floor)), weights)
    log_pool -= log_pool.max(axis=1, keepdims=True)
    pooled = np.exp(log_pool)
    pooled /= pooled.sum(axis=1, keepdims=True)
    return pooled


def _sorted_present(values: FloatArray, present: BoolArray) -> tuple[FloatArray, IntArray]:
    """``values`` sorted along the member axis with the missing ones last (as +inf);
    and the number present per request."""
    mask = present if values.ndim == 2 else present[:, :, None]
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    count: IntArray = present.sum(axis=1)
    return ordered, count


def _expand(per_request: FloatArray | IntArray, like: FloatArray) -> FloatArray | IntArray:
    """(n,) -> shape broadcastable against a (n, ...) array without the member axis."""
    return per_request.reshape((-1,) + (1,) * (like.ndim - 2))


def median(values: FloatArray, present: BoolArray) -> FloatArray:
    """The unweighted median over the members present, per label (n, k) or per score (n,);
    0 where none is present. Even counts average the two middle values (``np.median``)."""
    ordered, count = _sorted_present(values, present)
    idx_shape = (-1, 1) + (1,) * (values.ndim - 2)
    lower = np.take_along_axis(ordered, ((np.maximum(count, 1) - 1) // 2).reshape(idx_shape), 1)
    upper = np.take_along_axis(ordered, (count // 2).reshape(idx_shape), 1)
    # Halves first: (a + b) / 2 can overflow for scores near the double limit.
    mid = (lower * 0.5 + upper * 0.5)[:, 0]
    out: FloatArray = np.where(_expand(count, values) > 0, mid, 0.0)
    return out


def trimmed_mean(values: FloatArray, present: BoolArray, proportion: float) -> FloatArray:
    """The unweighted trimmed mean over the members present, as ``scipy.stats.trim_mean``:
    with c members present, ``int(proportion * c)`` values are cut from each end."""
    ordered, count = _sorted_present(values, present)
    cut = np.floor(proportion * count).astype(np.int64)
    kept = count - 2 * cut
    position = np.arange(values.shape[1])
    keep = (position >= cut[:, None]) & (position < (count - cut)[:, None])
    share = np.zeros(count.shape)
    np.divide(1.0, kept, out=share, where=kept > 0)
    if values.ndim == 3:
        keep = keep[:, :, None]
    # Each value is scaled before the sum, so that no partial sum can overflow.
    terms = np.where(keep, ordered, 0.0) * _expand(share, values)[:, None]
    out: FloatArray = terms.sum(axis=1)
    return out


def renormalise(pooled: FloatArray, probs: FloatArray, present: BoolArray) -> FloatArray:
    """Rescale each row of ``pooled`` (n, k) to sum to 1.

    An order statistic can be 0 for every label when the members disagree completely
    (e.g. three one-hot votes for three labels: every median is 0); such a row becomes
    the unweighted mean of the members present instead.
    """
    sums = pooled.sum(axis=1)
    out = np.zeros_like(pooled)
    np.divide(pooled, sums[:, None], out=out, where=sums[:, None] > 0)
    empty = (sums <= 0) & present.any(axis=1)
    if empty.any():
        rows = np.flatnonzero(empty)
        mean = np.where(present[rows, :, None], probs[rows], 0.0).sum(axis=1)
        out[rows] = mean / mean.sum(axis=1, keepdims=True)
    return out


# -- label vocabularies: each label over the members that cover it ---------------------
#
# ``covered`` (n, m, k) is True where a present member covers a label. Each label's value
# is computed over its covering members only, and the row is renormalised at the end; a
# label no present member covers gets 0. With every member covering every label these
# equal the functions above up to rounding; the Fuser uses those then (``covered`` None),
# so that scikit-learn parity stays exact.


def _renormalised_rows(pooled: FloatArray) -> FloatArray:
    sums = pooled.sum(axis=1, keepdims=True)
    out = np.zeros_like(pooled)
    np.divide(pooled, sums, out=out, where=sums > 0)
    return out


def weighted_average_covered(probs: FloatArray, raw: FloatArray, covered: BoolArray) -> FloatArray:
    """(n, k): per label k, sum_i w_i p_ik / sum_i w_i over the present members covering
    k, in member order; then each row renormalised."""
    w = raw[:, :, None] * covered
    acc: FloatArray = w[:, 0] * probs[:, 0]
    weight: FloatArray = w[:, 0].copy()
    for j in range(1, probs.shape[1]):
        acc += w[:, j] * probs[:, j]
        weight += w[:, j]
    out = np.zeros_like(acc)
    np.divide(acc, weight, out=out, where=weight > 0)
    return _renormalised_rows(out)


def geometric_mean_covered(
    probs: FloatArray, weights: FloatArray, covered: BoolArray, floor: float
) -> FloatArray:
    """(n, k): per label, the weighted mean of log max(p, floor) over the members covering
    it (their weights renormalised per label); exp, each row renormalised. A label no
    member covers gets 0."""
    w = weights[:, :, None] * covered
    logs = (w * np.log(np.maximum(probs, floor))).sum(axis=1)
    weight = w.sum(axis=1)
    log_pool = np.full_like(logs, -np.inf)
    np.divide(logs, weight, out=log_pool, where=weight > 0)
    empty = ~(weight > 0).any(axis=1)
    log_pool[empty] = 0.0
    log_pool -= log_pool.max(axis=1, keepdims=True)
    pooled: FloatArray = np.exp(log_pool)
    return _renormalised_rows(pooled)


def _sorted_covered(values: FloatArray, covered: BoolArray) -> tuple[FloatArray, IntArray]:
    ordered = np.sort(np.where(covered, values, np.inf), axis=1)
    count: IntArray = covered.sum(axis=1)
    return ordered, count


def median_covered(values: FloatArray, covered: BoolArray) -> FloatArray:
    """(n, k): per label, the unweighted median over the members covering it; 0 where none
    does."""
    ordered, count = _sorted_covered(values, covered)
    lower = np.take_along_axis(ordered, ((np.maximum(count, 1) - 1) // 2)[:, None, :], 1)[:, 0]
    upper = np.take_along_axis(ordered, (count // 2)[:, None, :], 1)[:, 0]
    out: FloatArray = np.where(count > 0, lower * 0.5 + upper * 0.5, 0.0)
    return out


def trimmed_mean_covered(values: FloatArray, covered: BoolArray, proportion: float) -> FloatArray:
    """(n, k): per label, the unweighted trimmed mean over the c members covering it
    (``int(proportion * c)`` cut from each end, as ``scipy.stats.trim_mean``)."""
    ordered, count = _sorted_covered(values, covered)
    cut = np.floor(proportion * count).astype(np.int64)
    kept = count - 2 * cut
    position = np.arange(values.shape[1])[None, :, None]
    keep = (position >= cut[:, None, :]) & (position < (count - cut)[:, None, :])
    share = np.zeros(count.shape)
    np.divide(1.0, kept, out=share, where=kept > 0)
    terms = np.where(keep, ordered, 0.0) * share[:, None, :]
    out: FloatArray = terms.sum(axis=1)
    return out
