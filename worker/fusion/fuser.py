"""The fusion engine's public entry point: ``Fuser.fuse`` turns a batch of finished
requests into fused results, one JSON-ready dict per request, in input order.

The runtime, ``replay`` and the offline ``fuse`` all call it, so a backtest computes
exactly what production computes. Artefacts (stacker, learned weights) are loaded and
checked once, in ``__init__``.

Decisions:

- Missing members have weight 0 and the others are renormalised. Fewer than
  ``[join] min_models`` members gives status ``insufficient`` (no prediction); so does
  a weighted strategy when every member present has weight 0 (a weight-0 model is a
  shadow: it never decides alone).
- ``median`` and ``trimmed_mean`` are unweighted order statistics (as ``np.median`` and
  ``scipy.stats.trim_mean``): each member present reports weight 1/c.
- ``stacking`` needs every configured member; a request with one missing is fused by
  ``[fusion] fallback`` and its result says so (``"fallback": "<strategy>"``). Its
  members report the (renormalised) configured weights, which also give ``agreement``.
- A ``[fusion] weights_file`` replaces the configured weights for every strategy.
- Member temperatures (calibration) apply to the members' probabilities before every
  strategy; the results show the probabilities the members sent, and each member's
  ``contribution`` is computed from the calibrated ones.
- Label vocabularies (``[[models]] labels`` / ``label_map``, worker.vocabulary): each
  label is fused over the members that cover it, and the fused row renormalised; a
  member with no mass on the fused labels abstains (weight 0, label null). When every
  model covers every label the strategies are exactly those without vocabularies.
  ``contribution`` is computed from the calibrated ones. ``[fusion] calibration_file``
  is loaded here, so every command that fuses applies it the same way, and each result
  names it (``"calibration": "sha256:<first 16 hex digits of the file>"``). Stacking
  never calibrates: its meta-learner was fitted on raw probabilities (the configuration
  refuses the combination; a stacking Fuser asked for by name ignores the file).
- The text task (``text_vote``, ``consensus``): the configured weights renormalised over
  the members present, as for labels; a member's own ``confidence`` is shown in its
  result but does not weigh (models' confidences are not on one scale, and a member
  that sends none would need a made-up one). ``[fusion] similarity`` and ``normalise``
  choose how texts are compared.

The strategies themselves, and which task each serves, are in ``worker.fusion.registry``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.errors import ConfigError
from worker.events import FinishedRequest
from worker.fusion import native, registry
from worker.fusion.artefact import load_stacker, load_weights, read_calibration
from worker.fusion.batch import Batch, FloatArray, build_batch
from worker.fusion.calibration import apply_temperatures
from worker.fusion.native import Counted
from worker.fusion.result import Fused, classification_results, regression_results, text_results
from worker.fusion.similarity import prepare as prepare_similarity
from worker.fusion.text import TextOptions, text_normalisation
from worker.fusion.textnorm import prepare

if TYPE_CHECKING:
    # Only a type here: worker.config imports the registry, and so this package.
    from worker.config import Config

log = logging.getLogger(__name__)


def _power_of_two_scaled(weights: FloatArray) -> FloatArray:
    """``weights`` scaled so that the largest is in [0.5, 1): ratios, and so ties between
    sums of weights, are kept exactly (a power of two), and no sum can overflow."""
    _, exponent = math.frexp(float(weights.max()))
    scaled: FloatArray = weights * 2.0**-exponent
    return scaled


class Fuser:
    """Fuse batches of finished requests with one strategy.

    ``strategy`` overrides ``[fusion] strategy``. ``temperatures`` (m,), > 0, calibrate
    the members (``worker.fusion.artefact.load_calibration``) instead of ``[fusion]
    calibration_file``; ``calibration`` is then the id the results name (None: none).
    Raises ConfigError for a strategy that does not exist or does not fit the task,
    ArtefactError for an artefact that does not match the configuration.
    """

    def __init__(
        self,
        config: Config,
        strategy: str | None = None,
        temperatures: FloatArray | None = None,
        calibration: str | None = None,
    ) -> None:
        fusion = config.fusion
        name = strategy or fusion.strategy
        task = registry.task_of(fusion.labels, fusion.task)
        spec = registry.lookup(name, task)
        self._text = task == "text"
        self.strategy = name
        self.models = config.model_names
        self.labels = fusion.labels
        self._n_labels = len(fusion.labels)
        vocab = config.vocabularies
        # None when every model reports every fused label: the fusion without vocabularies.
        self._vocab = None if vocab.full else vocab
        weights = np.array(config.weights, dtype=np.float64)
        if fusion.weights_file:
            weights = load_weights(fusion.weights_file, self.models, self.labels)
            log.info("learned weights from %s: %s", fusion.weights_file, weights.tolist())
        self.weights = weights
        self.fallback: str | None = None
        stacker = None
        if spec.needs_stacker:
            if not vocab.full_cover:
                # Its meta-features are every member's probability of every label.
                raise ConfigError(
                    "fusion.strategy", name, "needs every model to cover every fused label"
                )
            if not fusion.stacker:
                raise ConfigError("fusion.stacker", fusion.stacker, f"required with {name}")
            stacker = load_stacker(fusion.stacker, self.models, self.labels)
            self.fallback = fusion.fallback
            log.info("stacker from %s, fallback %s", fusion.stacker, self.fallback)
        text = None
        if self._text:
            normalisation = text_normalisation(name, fusion.normalise)
            prepare(normalisation)  # the first request should not wait for the tables
            # nor for the n-gram kernel's compilation
            prepare_similarity(fusion.similarity, fusion.text_threads)
            text = TextOptions(normalisation, fusion.similarity)
        self._settings = registry.Settings(
            weights=_power_of_two_scaled(weights),
            min_models=config.join.min_models,
            n_labels=self._n_labels,
            trim_proportion=fusion.trim_proportion,
            geometric_floor=fusion.geometric_floor,
            stacker=stacker,
            fallback=self.fallback,
            text=text,
        )
        self.temperatures: FloatArray | None = None
        self.calibration: str | None = None
        if temperatures is None and fusion.calibration_file and not spec.needs_stacker:
            from worker.fusion.calibration import LOG_FLOOR

            loaded = read_calibration(fusion.calibration_file, self.models, self.labels, LOG_FLOOR)
            temperatures, calibration = loaded.temperatures, loaded.id
            log.info(
                "calibration %s from %s: %s",
                calibration,
                fusion.calibration_file,
                temperatures.tolist(),
            )
        if temperatures is not None:
            t = np.asarray(temperatures, dtype=np.float64)
            if self._n_labels == 0:
                raise ConfigError(
                    "fusion.calibration_file", t.tolist(), "calibration needs fusion.labels"
                )
            if t.shape != (len(self.models),) or not (np.isfinite(t) & (t > 0)).all():
                raise ConfigError(
                    "fusion.calibration_file",
                    t.tolist(),
                    f"needs {len(self.models)} finite temperatures > 0, one per model",
                )
            self.temperatures = t
            self.calibration = calibration

    def set_weights(self, weights: FloatArray) -> None:
        """Fuse from now on with ``weights`` (m,), >= 0 with a positive sum (adaptive
        weights move between batches; the results name the weights they used)."""
        self.weights = np.array(weights, dtype=np.float64)
        self._settings = dataclasses.replace(
            self._settings, weights=_power_of_two_scaled(self.weights)
        )

    def fuse(self, finished: Sequence[FinishedRequest]) -> list[dict[str, Any]]:
        """One fused result per request of ``finished``, in the same order."""
        if not finished:
            return []
        return self.fuse_arrays(finished)[0]

    def fuse_bytes(self, finished: Sequence[FinishedRequest]) -> tuple[list[bytes], Counted] | None:
        """``fuse``'s results as their JSON bytes (``result_json``'s), with what the
        metrics count of them, written by the compiled writer without the dicts
        (``worker.fusion.native``). None where it does not cover this fuser or this batch
        (not installed, a task other than classification, labels some model does not
        report, a string that is not UTF-8): ``fuse`` then."""
        if not native.available() or self._text or self._n_labels == 0 or not finished:
            return None
        if self._vocab is not None and not self._vocab.full_cover:
            return None
        batch = build_batch(finished, self.models, self._n_labels, self._vocab)
        scored = self.calibrate(batch)
        return native.classification_bytes(
            finished,
            self.models,
            self.labels,
            self.strategy,
            self.compute(scored),
            batch.probs,
            batch.member_labels,
            self.fallback,
            scored.probs,
            self.calibration,
        )

    def fuse_arrays(
        self, finished: Sequence[FinishedRequest]
    ) -> tuple[list[dict[str, Any]], Batch, Fused]:
        """``fuse``, with the arrays it fused from (the calibrated batch) and computed:
        what the learning from labels remembers of each request."""
        batch = build_batch(finished, self.models, self._n_labels, self._vocab, text=self._text)
        scored = self.calibrate(batch)
        fused = self.compute(scored)
        if self._text:
            return text_results(finished, self.models, self.strategy, fused), scored, fused
        if self._n_labels == 0:
            results = regression_results(finished, self.models, self.strategy, fused, batch.scores)
            return results, scored, fused
        results = classification_results(
            finished,
            self.models,
            self.labels,
            self.strategy,
            fused,
            batch.probs,
            batch.member_labels,
            self.fallback,
            scored.probs,
            None if self._vocab is None or self._vocab.full_cover else self._vocab.cover,
            self.calibration,
        )
        return results, scored, fused

    def calibrate(self, batch: Batch) -> Batch:
        """``batch`` with the members' probabilities calibrated (itself without
        temperatures). Temperature scaling keeps each member's argmax, so hard_vote's
        votes do not change."""
        if self.temperatures is None:
            return batch
        probs = apply_temperatures(batch.probs, batch.present, self.temperatures, batch.covered)
        return dataclasses.replace(batch, probs=probs)

    def compute(self, batch: Batch) -> Fused:
        """The array part of ``fuse``: this Fuser's strategy over a whole batch, whose
        probabilities are already calibrated (``calibrate``)."""
        return registry.fuse(self.strategy, batch, self._settings)
