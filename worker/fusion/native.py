"""Classification results straight to their JSON bytes, through the compiled writer.

The writer is a part of the optional compiled extension (``worker.native``). Where the
live worker needs only the bytes of its results and what the metrics count of them,
``classification_bytes`` writes both without the dict per request and per member that
``classification_results`` builds (those dicts and their encoding were a quarter of the
worker's CPU at full load). The bytes are those of ``result_json`` over
``classification_results`` for the same batch: tests compare them on random batches and
through the engine.

Without the extension, with ``FUSION_NATIVE=0`` in the environment, for a batch the
writer does not cover (labels some model does not report, a string that is not UTF-8)
``classification_bytes`` returns None and the caller builds the dicts as before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.events import FinishedRequest
from worker.fusion.batch import FloatArray, IntArray
from worker.fusion.result import Fused, member_columns
from worker.native import classification_json

# The extension's status codes, by index.
STATUSES = ("complete", "partial", "decided", "insufficient")


def available() -> bool:
    """Whether the compiled writer is installed and not switched off."""
    return classification_json is not None


@dataclass(frozen=True, slots=True)
class Counted:
    """What the metrics count of a batch written by the compiled writer, which builds no
    result dicts: per configured model how often it was missing (not counting
    ``decided`` results) and how often its label was not the fused one, each result's
    latency in ms and its status (one byte per result, an index of ``STATUSES``), in
    order; per configured model the arrival delays of its members (``ts`` minus the
    request's ``first_ts``, ms; native-order int64 bytes, in request order); whether any
    member has a ``traceparent`` (when none has, no fused record gets the header)."""

    strategy: str
    models: Sequence[str]
    missing: list[int]
    disagree: list[int]
    latencies_ms: list[int]
    status_of: bytes
    arrivals: list[bytes]
    traced: bool

    def tallies(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[str, int]]:
        """The counts as ``Metrics`` tallies them, zeros left out: results by (strategy,
        status), missing and disagreeing members by model."""
        strategy = self.strategy
        statuses = {(strategy, STATUSES[s]): n for s, n in Counter(self.status_of).items()}
        missing = {m: n for m, n in zip(self.models, self.missing, strict=True) if n}
        disagree = {m: n for m, n in zip(self.models, self.disagree, strict=True) if n}
        return statuses, missing, disagree


def classification_bytes(
    finished: Sequence[FinishedRequest],
    models: Sequence[str],
    labels: Sequence[str],
    strategy: str,
    fused: Fused,
    member_probs: FloatArray,
    member_labels: IntArray,
    fallback: str | None,
    scored_probs: FloatArray | None,
    calibration: str | None,
) -> tuple[list[bytes], Counted] | None:
    """The JSON bytes of each request's result, in order, and what the metrics count of
    them; None where the compiled writer is not there or does not cover the batch. The
    arguments are ``classification_results``' (every model covering every label)."""
    if classification_json is None:
        return None
    assert fused.probs is not None
    assert fused.labels is not None
    agreement, contribution = member_columns(
        fused, member_probs, member_labels, strategy, scored_probs
    )
    answered = fused.answered
    by_fallback = fused.fallback if fused.fallback is not None else np.zeros_like(answered)
    written = classification_json(
        finished if isinstance(finished, list) else list(finished),
        models,
        list(labels),
        strategy,
        fallback,
        calibration,
        _raw(fused.probs, np.float64),
        _raw(fused.labels, np.int64),
        _raw(fused.probs.max(axis=1), np.float64),
        _raw(agreement, np.float64),
        _raw(fused.weights, np.float64),
        _raw(answered, np.bool_),
        _raw(by_fallback, np.bool_),
        _raw(member_probs, np.float64),
        _raw(member_labels, np.int64),
        _raw(contribution, np.float64),
    )
    if written is None:
        return None
    out, (missing, disagree, latencies, status_of, arrivals, traced) = written
    return out, Counted(strategy, models, missing, disagree, latencies, status_of, arrivals, traced)


def _raw(values: Any, dtype: Any) -> bytes:
    """An array's values as the extension reads them: C order, native byte order."""
    raw: bytes = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return raw
