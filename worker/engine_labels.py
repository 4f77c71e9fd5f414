"""The label path of the engine step: what the engine needs of a fuser (``BatchFuser``,
and ``LearningFuser`` to learn from labels) and the fusion of finished requests per
partition number with that partition's weights (``fuse_learning``), each fused request
remembered for its label. Pure: no Kafka, no clock."""

from __future__ import annotations

from typing import Any, Protocol

from worker.events import FinishedRequest
from worker.fusion.batch import Batch, FloatArray
from worker.fusion.result import Fused
from worker.learning import Learning


class BatchFuser(Protocol):
    """What the engine needs of a fuser: ``worker.fusion.Fuser`` or any wrapper of it."""

    def fuse(self, finished: list[FinishedRequest], /) -> list[dict[str, Any]]: ...


class LearningFuser(BatchFuser, Protocol):
    """What the engine needs of a fuser to learn from labels (``worker.fusion.Fuser``)."""

    weights: FloatArray

    def fuse_arrays(
        self, finished: list[FinishedRequest], /
    ) -> tuple[list[dict[str, Any]], Batch, Fused]: ...

    def set_weights(self, weights: FloatArray, /) -> None: ...


def fuse_learning(
    fuser: LearningFuser,
    learning: Learning,
    start_weights: FloatArray,
    finished: list[tuple[int, FinishedRequest]],
) -> list[dict[str, Any]]:
    """Fuse per partition number (each with its own weights when adaptive; a partition
    whose labels have not moved them yet uses ``start_weights``), remember every fused
    request for its label; the results in the order of ``finished``."""
    rows: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(finished):
        rows.setdefault(p, []).append(i)
    results: list[dict[str, Any]] = [{} for _ in finished]
    for p, indices in rows.items():
        group = [finished[i][1] for i in indices]
        weights = learning.weights(p)
        if learning.adaptive:
            fuser.set_weights(start_weights if weights is None else weights)
        fused_results, batch, fused = fuser.fuse_arrays(group)
        for i, result in zip(indices, fused_results, strict=True):
            results[i] = result
        now = max(f.fused_ts for f in group)
        learning.remember(
            p, [f.request_id for f in group], [f.fused_ts for f in group], batch, fused, now
        )
    return results
