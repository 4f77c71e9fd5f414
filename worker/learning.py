"""Learning from delayed labels, as the engine step runs it: per partition number a
feedback memory of recently fused requests and (``[fusion] weights = "adaptive"``) the
adaptive weights; one set of quality windows for the whole worker. Pure: no Kafka, no
clock (``now_ms`` is the caller's: the wall clock live, event time offline), no I/O.

Why per partition number: the labels topic is co-partitioned with the inputs and keyed
by request_id, so a label lands on the partition number its request was fused on; each
partition number learns from its own labels, and its weights move with it when the
group rebalances (at-least-once: a compacted snapshot keyed by the partition number;
exactly-once: written by that partition's transactional producer). A worker's replicas
never share mutable state. The cost: each partition learns from 1/P of the labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from worker.config import Config
from worker.fusion.adaptive import AdaptiveWeights
from worker.fusion.batch import Batch, FloatArray
from worker.fusion.feedback import JOINED, FeedbackMemory, LabelEvent
from worker.fusion.quality import Quality, QualityWindows
from worker.fusion.result import Fused


class Learning:
    """The feedback path of one engine (see the module docstring).

    config : the validated configuration ([feedback], [fusion] weights)
    start_weights : ndarray of shape (m,), the weights a partition starts from (the
        Fuser's: configured, or from ``[fusion] weights_file``)
    """

    def __init__(self, config: Config, start_weights: FloatArray) -> None:
        fb = config.feedback
        self.models = config.model_names
        self.adaptive = config.fusion.weights == "adaptive"
        self.regression = config.fusion.is_regression
        self._start = np.array(start_weights, dtype=np.float64)
        self._learning_rate = fb.learning_rate
        self._floor = fb.weight_floor
        self._memory_ms = fb.memory_ms
        self._memory_count = fb.memory_count
        self.memories: dict[int, FeedbackMemory] = {}
        self.learners: dict[int, AdaptiveWeights] = {}
        self.windows = QualityWindows(self.models, fb.window, regression=self.regression)
        # Raises ConfigError on a bad learning rate or floor before anything runs.
        self._learner(-1)
        self.learners.pop(-1, None)

    # -- partition state ------------------------------------------------------------

    def _memory(self, partition: int) -> FeedbackMemory:
        memory = self.memories.get(partition)
        if memory is None:
            memory = self.memories[partition] = FeedbackMemory(self._memory_ms, self._memory_count)
        return memory

    def _learner(self, partition: int) -> AdaptiveWeights:
        learner = self.learners.get(partition)
        if learner is None:
            learner = self.learners[partition] = AdaptiveWeights(
                self.models, self._start, self._learning_rate, self._floor
            )
        return learner

    def close(self, partition: int) -> None:
        """Forget ``partition`` (its new owner restores its weights)."""
        self.memories.pop(partition, None)
        self.learners.pop(partition, None)

    def weights(self, partition: int) -> FloatArray | None:
        """The weights ``partition`` fuses with now, (m,); None (the Fuser's own, the
        configured ones) when static, or until a label moved them or a snapshot was
        restored."""
        learner = self.learners.get(partition) if self.adaptive else None
        return None if learner is None else learner.weights

    def state(self, partition: int) -> dict[str, Any]:
        """``partition``'s weights as a JSON-ready snapshot (``AdaptiveWeights.to_state``)."""
        return self._learner(partition).to_state()

    def restore(self, partition: int, state: Mapping[str, Any]) -> None:
        """Resume ``partition`` from a snapshot. Raises AdaptiveStateError when it does not
        fit the configuration (other models)."""
        self.learners[partition] = AdaptiveWeights.from_state(
            state, self.models, self._learning_rate, self._floor
        )

    def quality(self) -> dict[str, Quality]:
        """Each model's and the fused output's quality window (``QualityWindows``)."""
        return self.windows.snapshot()

    # -- the feedback path ----------------------------------------------------------

    def remember(
        self,
        partition: int,
        request_ids: Sequence[str],
        fused_ts: Sequence[int],
        batch: Batch,
        fused: Fused,
        now_ms: int,
    ) -> None:
        """Keep the answered requests of a fused batch (all of ``partition``) until their
        labels come: ``batch`` as the strategy fused it (calibrated), ``fused`` its output.
        An ``insufficient`` request has no prediction to learn from."""
        rows = np.flatnonzero(fused.answered)
        if len(rows) == 0:
            return
        ids = [request_ids[i] for i in rows.tolist()]
        ts = [fused_ts[i] for i in rows.tolist()]
        self._memory(partition).remember_batch(
            ids,
            ts,
            batch.present[rows],
            batch.probs[rows],
            batch.scores[rows],
            None if fused.probs is None else fused.probs[rows],
            None if fused.scores is None else fused.scores[rows],
            now_ms,
        )

    def label(self, partition: int, event: LabelEvent, now_ms: int) -> str:
        """Join one label with ``partition``'s memory; when joined, score the quality
        windows and (adaptive) step the weights. Returns the outcome
        (``worker.fusion.feedback.OUTCOMES``); the weights moved if it is ``joined`` and
        the learning is adaptive."""
        joined = self._memory(partition).join(event, now_ms)
        req = joined.request
        if joined.outcome != JOINED or req is None:
            return joined.outcome
        if event.label is not None and req.fused_probs is not None:
            self.windows.observe(req.member_probs, req.present, req.fused_probs, event.label)
            if self.adaptive:
                self._learner(partition).update(req.member_probs, req.present, event.label)
        elif event.score is not None and req.fused_score is not None:
            self.windows.observe_score(req.member_scores, req.present, req.fused_score, event.score)
            if self.adaptive:
                self._learner(partition).update_score(req.member_scores, req.present, event.score)
        return joined.outcome
