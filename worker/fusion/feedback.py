"""The feedback memory: recently fused requests' member predictions, kept until their
label arrives, bounded in time and in count; ``join`` matches a label event to them.

Labels arrive later than results (a human review, a user click). A label whose request
is still remembered is ``joined`` and hands back what the learning needs (the members'
predictions as the fusion used them, and the fused output); its entry is then dropped,
so a repeated label never updates twice (``duplicate``). A label whose request was
remembered but forgotten before the label came (older than ``memory_ms``, or pushed out
by ``memory_count`` newer ones) is ``expired``: the memory is too short for the labelling
delay. Any other label is ``unknown`` (a request fused elsewhere, e.g. on another
partition's worker, or forgotten so long ago that even its id is gone).

Ids of forgotten and joined requests are themselves kept for as long, and as many, as
entries are, so that the outcome is told apart at a bounded cost. The clock is injected:
``now_ms`` is the worker's wall clock live and event time offline. No Kafka, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from worker.errors import ConfigError
from worker.fusion.batch import BoolArray, FloatArray

JOINED = "joined"
EXPIRED = "expired"
UNKNOWN = "unknown"
DUPLICATE = "duplicate"
OUTCOMES = (JOINED, EXPIRED, UNKNOWN, DUPLICATE)


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """The true outcome of a request (``schemas/label.v1.json``, decoded): ``label`` is
    an index in the configured label order (classification), ``score`` the true value
    (regression); ``ts`` its event time, ms since the epoch."""

    request_id: str
    ts: int
    label: int | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Remembered:
    """One fused request as the learning needs it.

    present : ndarray of shape (m,), bool
    member_probs : ndarray of shape (m, k), the probabilities the strategy fused (after
        calibration; one-hot for a label-only member); (m, 0) for scores
    member_scores : ndarray of shape (m,), (0,) for a classification
    fused_probs : ndarray of shape (k,), or None for scores
    fused_score : the fused score, or None for a classification
    """

    request_id: str
    fused_ts: int
    present: BoolArray
    member_probs: FloatArray
    member_scores: FloatArray
    fused_probs: FloatArray | None
    fused_score: float | None


@dataclass(frozen=True, slots=True)
class Joined:
    """The outcome of one label event; ``request`` is set when it is ``joined``."""

    outcome: str
    label: LabelEvent
    request: Remembered | None = None


class FeedbackMemory:
    """Recently fused requests by request_id, oldest first; at most ``memory_count`` of
    them, none fused more than ``memory_ms`` before ``now_ms``."""

    def __init__(self, memory_ms: int, memory_count: int) -> None:
        if memory_ms <= 0:
            raise ConfigError("feedback.memory_ms", memory_ms, "must be > 0")
        if memory_count <= 0:
            raise ConfigError("feedback.memory_count", memory_count, "must be > 0")
        self.memory_ms = memory_ms
        self.memory_count = memory_count
        self._entries: OrderedDict[str, Remembered] = OrderedDict()
        # request_id -> (EXPIRED | DUPLICATE, when it left the memory).
        self._gone: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, request: Remembered, now_ms: int) -> None:
        """Keep ``request`` until its label comes or it is forgotten. A request fused again
        (a repeat after a restart) replaces the earlier entry."""
        rid = request.request_id
        self._entries.pop(rid, None)
        self._gone.pop(rid, None)
        self._entries[rid] = request
        self.expire(now_ms)

    def remember_batch(
        self,
        request_ids: Sequence[str],
        fused_ts: Sequence[int],
        present: BoolArray,
        member_probs: FloatArray,
        member_scores: FloatArray,
        fused_probs: FloatArray | None,
        fused_scores: FloatArray | None,
        now_ms: int,
    ) -> None:
        """``remember`` each request of a fused batch, from the fusion's arrays: present
        (n, m), member_probs (n, m, k) as the strategy fused them (after calibration),
        member_scores (n, m), fused_probs (n, k) or fused_scores (n,). Rows are copied,
        so the batch's arrays are not kept alive by the memory."""
        for i, rid in enumerate(request_ids):
            self.remember(
                Remembered(
                    rid,
                    fused_ts[i],
                    present[i].copy(),
                    member_probs[i].copy(),
                    member_scores[i].copy(),
                    None if fused_probs is None else fused_probs[i].copy(),
                    None if fused_scores is None else float(fused_scores[i]),
                ),
                now_ms,
            )

    def join(self, label: LabelEvent, now_ms: int) -> Joined:
        """Match ``label`` to a remembered request (see the module docstring)."""
        self.expire(now_ms)
        request = self._entries.pop(label.request_id, None)
        if request is not None:
            self._forget(label.request_id, DUPLICATE, now_ms)
            return Joined(JOINED, label, request)
        gone = self._gone.get(label.request_id)
        return Joined(gone[0] if gone is not None else UNKNOWN, label)

    def expire(self, now_ms: int) -> None:
        """Forget the entries older than ``memory_ms`` or beyond ``memory_count``, and the
        ids of requests forgotten as long ago."""
        entries = self._entries
        while entries:
            rid, oldest = next(iter(entries.items()))
            if len(entries) <= self.memory_count and now_ms - oldest.fused_ts <= self.memory_ms:
                break
            del entries[rid]
            self._forget(rid, EXPIRED, now_ms)
        gone = self._gone
        while gone:
            rid, (_, since_ms) = next(iter(gone.items()))
            if len(gone) <= self.memory_count and now_ms - since_ms <= self.memory_ms:
                break
            del gone[rid]

    def _forget(self, request_id: str, outcome: str, now_ms: int) -> None:
        self._gone.pop(request_id, None)
        self._gone[request_id] = (outcome, now_ms)
