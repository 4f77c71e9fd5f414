"""The batch form of the fusion: n finished requests as arrays, built once per batch.

Every strategy works on these arrays, never on one request at a time. Building them
is the only per-member loop of the fusion: for classification, the compiled extension
packs the members' probabilities into one buffer (``worker.native.pack_members``) where
it is installed and sure of the batch; else a Python loop fills flat lists (the members'
packed probabilities) and hands them to numpy in one call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from worker import native
from worker.errors import FusionError
from worker.events import FinishedRequest, pack_probs

if TYPE_CHECKING:
    from worker.vocabulary import Vocabularies

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_FLOAT_BYTES = 8  # one packed float64 of PredictionEvent.probs


@dataclass(frozen=True, slots=True)
class Batch:
    """The members' predictions of n requests in the configured model and label order.

    probs : ndarray of shape (n, m, k)
        Each member's probabilities; a member that sent only a ``label`` is a one-hot
        vote; zeros where the member is missing. Shape (n, m, 0) for scores.
    scores : ndarray of shape (n, m)
        Each member's score (regression); zeros where missing. Shape (n, 0) when the
        task is a classification.
    present : ndarray of shape (n, m), bool
        Which members reported (and, with label vocabularies, did not abstain).
    covered : ndarray of shape (n, m, k), bool, or None
        With label vocabularies that leave a label uncovered: which labels each present
        member covers (False where it is missing). None: every present member covers
        every label, and the strategies are exactly those without vocabularies.
    texts : n rows of m texts (text task), None where the member is missing; empty
        for the other tasks.
    """

    probs: FloatArray
    scores: FloatArray
    present: BoolArray
    covered: BoolArray | None = None
    texts: Sequence[Sequence[str | None]] = ()

    @property
    def n_requests(self) -> int:
        return int(self.present.shape[0])

    @property
    def member_labels(self) -> IntArray:
        """ndarray of shape (n, m): each member's label index (its sent label, or the
        argmax of its probs, lowest index on ties); -1 where missing."""
        labels: IntArray = np.where(self.present, self.probs.argmax(axis=2), -1)
        return labels

    def take(self, rows: IntArray) -> Batch:
        """The sub-batch of the given request rows."""
        covered = None if self.covered is None else self.covered[rows]
        texts = [self.texts[r] for r in rows.tolist()] if self.texts else ()
        return Batch(
            self.probs[rows], self.scores[rows], self.present[rows], covered=covered, texts=texts
        )


def build_batch(
    finished: Sequence[FinishedRequest],
    models: Sequence[str],
    n_labels: int,
    vocab: Vocabularies | None = None,
    *,
    text: bool = False,
) -> Batch:
    """Arrange ``finished`` as a Batch: ``models`` in the configured order, ``n_labels``
    labels (0 for scores and texts), the members' texts when ``text``. Events are
    trusted to be decoded (aligned and validated). ``vocab``: the models' label
    vocabularies when some are not full (None: all are); a member whose vector has no
    mass abstains (not present), and ``covered`` is set when some model leaves a label
    uncovered."""
    n, m = len(finished), len(models)
    present: list[bool] = []
    if text:
        return _text_batch(finished, models)
    if n_labels == 0:
        scores: list[float] = []
        for req in finished:
            get = req.members.get
            for name in models:
                ev = get(name)
                if ev is None:
                    scores.append(0.0)
                    present.append(False)
                elif ev.score is not None:
                    scores.append(ev.score)
                    present.append(True)
                else:
                    raise _kind_error(req, name, "a score")
        return Batch(
            np.empty((n, m, 0)),
            np.array(scores, dtype=np.float64).reshape(n, m),
            np.array(present, dtype=np.bool_).reshape(n, m),
        )

    pack = native.pack_members
    packed = None if pack is None else pack(finished, models, n_labels)
    if packed is not None:
        rows_bytes, present_bytes = packed
        probs = np.frombuffer(rows_bytes, dtype=np.float64).reshape(n, m, n_labels)
        reported = np.frombuffer(present_bytes, dtype=np.bool_).reshape(n, m)
        return _with_vocab(probs, reported, vocab)
    # Every row packed as the events hold their probs, so that one join makes the array.
    row_bytes = _FLOAT_BYTES * n_labels
    zeros = bytes(row_bytes)
    one_hot = _one_hot(n_labels)
    rows: list[bytes] = []
    for req in finished:
        get = req.members.get
        for name in models:
            ev = get(name)
            if ev is None:
                rows.append(zeros)
                present.append(False)
            elif ev.probs is not None:
                if len(ev.probs) != row_bytes:
                    raise FusionError(
                        f"request {req.request_id!r}: member {name!r} sent "
                        f"{len(ev.probs) // _FLOAT_BYTES} probabilities, "
                        f"{n_labels} labels are configured"
                    )
                rows.append(ev.probs)
                present.append(True)
            elif ev.label is not None:
                # -1: a code of the model's own that maps to no fused label (it abstains).
                rows.append(one_hot[ev.label] if ev.label >= 0 else zeros)
                present.append(True)
            else:
                raise _kind_error(req, name, "probs or a label")
    # A bytearray rather than bytes: an array over bytes would be read-only.
    flat = np.frombuffer(bytearray().join(rows), dtype=np.float64)
    probs = flat.reshape(n, m, n_labels)
    reported = np.array(present, dtype=np.bool_).reshape(n, m)
    return _with_vocab(probs, reported, vocab)


def _with_vocab(probs: FloatArray, reported: BoolArray, vocab: Vocabularies | None) -> Batch:
    """A classification batch of ``probs`` and ``reported`` (writable arrays), with the
    abstentions and coverage of ``vocab``."""
    n = len(probs)
    if vocab is None or vocab.full:
        return Batch(probs, np.empty((n, 0)), reported)
    if vocab.may_abstain:
        reported &= probs.sum(axis=2) > 0
    covered = None if vocab.full_cover else reported[:, :, None] & vocab.cover[None]
    return Batch(probs, np.empty((n, 0)), reported, covered)


@functools.cache
def _one_hot(n_labels: int) -> tuple[bytes, ...]:
    """The packed one-hot vote of each label: a label-only member's row. Made once per
    label count, not per batch (a small batch spent a tenth of its time on them)."""
    return tuple(pack_probs(float(i == hot) for i in range(n_labels)) for hot in range(n_labels))


def _text_batch(finished: Sequence[FinishedRequest], models: Sequence[str]) -> Batch:
    """The text task's batch: each request's texts in model order, None where missing."""
    n, m = len(finished), len(models)
    rows: list[list[str | None]] = []
    for req in finished:
        get = req.members.get
        row: list[str | None] = []
        for name in models:
            ev = get(name)
            if ev is not None and ev.text is None:
                raise _kind_error(req, name, "text")
            row.append(None if ev is None else ev.text)
        rows.append(row)
    present = np.array([[t is not None for t in row] for row in rows], dtype=np.bool_)
    return Batch(np.empty((n, m, 0)), np.empty((n, 0)), present.reshape(n, m), texts=rows)


def _kind_error(req: FinishedRequest, model: str, expected: str) -> FusionError:
    return FusionError(
        f"request {req.request_id!r}: member {model!r} sent no {expected} "
        "(the prediction kind does not fit the configured task)"
    )
