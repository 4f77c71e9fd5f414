"""Every fusion strategy, declared once: its name, the tasks it serves, whether it
uses the configured weights, and the function that computes it over a batch.

Configuration validation, the Fuser, replay's multi-strategy pass and the backtest's
default strategies all read ``STRATEGIES``; adding a strategy is one entry here (as
scikit-learn's ``_SCORERS`` table). The order of the table is the order in which the
backtest runs and lists the strategies.

Every function takes the batch (``Batch``), the members' weights for it (``Weights``)
and the Fuser's fixed settings (``Settings``) and returns a ``Fused``. The text task's
strategies (``text_vote``, ``consensus``) read the batch's texts and return the chosen
texts in ``Fused.texts`` (``worker.fusion.text``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, cast

import numpy as np

from worker.errors import ConfigError
from worker.fusion import strategies as st
from worker.fusion.batch import Batch, BoolArray, FloatArray
from worker.fusion.result import Fused
from worker.fusion.stacking import Stacker, meta_features
from worker.fusion.text import CONSENSUS, TEXT_VOTE, TextOptions, TextResult, fuse_text_batch

Task = Literal["classification", "regression", "text"]
CLASSIFICATION: frozenset[Task] = frozenset({"classification"})
BOTH: frozenset[Task] = frozenset({"classification", "regression"})
TEXT: frozenset[Task] = frozenset({"text"})


@dataclass(frozen=True, slots=True)
class Settings:
    """What a Fuser fixes once for every batch.

    weights : ndarray of shape (m,), the configured weights (scaled by a power of two)
    """

    weights: FloatArray
    min_models: int
    n_labels: int
    trim_proportion: float
    geometric_floor: float
    stacker: Stacker | None = None
    fallback: str | None = None
    text: TextOptions | None = None


@dataclass(frozen=True, slots=True)
class Weights:
    """The members' weights for one batch of n requests and m members.

    raw : ndarray of shape (n, m), the configured weight of each member present, else 0
        (an unweighted strategy: 1/c for each of the c members present)
    total : ndarray of shape (n,), the sum of ``raw`` per request
    reported : ndarray of shape (n, m), the weights the result names (sum 1 per row)
    answered : ndarray of shape (n,), bool; enough members (and weight) to answer
    """

    raw: FloatArray
    total: FloatArray
    reported: FloatArray
    answered: BoolArray


StrategyFunction = Callable[[Batch, Weights, Settings], Fused]


@dataclass(frozen=True, slots=True)
class Strategy:
    """One fusion strategy.

    weighted : False for order statistics: every member present weighs 1/c.
    needs_stacker : True when it needs a fitted ``[fusion] stacker`` artefact (and so
        cannot serve as a fallback or run without one).
    """

    name: str
    tasks: frozenset[Task]
    weighted: bool
    function: StrategyFunction
    needs_stacker: bool = False


def weights_for(batch: Batch, weighted: bool, settings: Settings) -> Weights:
    """The members' weights for ``batch``: the configured ones renormalised over the
    members present, or 1/c each for an unweighted strategy."""
    present = batch.present
    count = present.sum(axis=1)
    enough = count >= settings.min_models
    if not weighted:
        reported = present / np.maximum(count, 1)[:, None]
        return Weights(reported, (count > 0).astype(np.float64), reported, enough)
    raw, total = st.masked_weights(present, settings.weights)
    # A weight-0 model is a shadow: it never decides alone.
    return Weights(raw, total, st.normalised(raw, total), enough & (total > 0))


def _classified(probs: FloatArray, w: Weights) -> Fused:
    return Fused(probs, probs.argmax(axis=1), None, w.reported, w.answered)


def _weighted_average(batch: Batch, w: Weights, s: Settings) -> Fused:
    if s.n_labels == 0:
        score = st.weighted_average_scores(batch.scores, w.reported)
        return Fused(None, None, score, w.reported, w.answered)
    if batch.covered is not None:
        return _classified(st.weighted_average_covered(batch.probs, w.raw, batch.covered), w)
    return _classified(st.weighted_average_probs(batch.probs, w.raw, w.total), w)


def _hard_vote(batch: Batch, w: Weights, s: Settings) -> Fused:
    counts = st.hard_vote(batch.member_labels, w.raw, s.n_labels)
    # The label comes from the raw counts: dividing could merge near-ties.
    labels = counts.argmax(axis=1)
    probs = np.zeros_like(counts)
    np.divide(counts, w.total[:, None], out=probs, where=w.total[:, None] > 0)
    return Fused(probs, labels, None, w.reported, w.answered)


def _geometric_mean(batch: Batch, w: Weights, s: Settings) -> Fused:
    if batch.covered is not None:
        pooled = st.geometric_mean_covered(
            batch.probs, w.reported, batch.covered, s.geometric_floor
        )
        return _classified(pooled, w)
    return _classified(st.geometric_mean(batch.probs, w.reported, s.geometric_floor), w)


def _median(batch: Batch, w: Weights, s: Settings) -> Fused:
    if s.n_labels == 0:
        return Fused(None, None, st.median(batch.scores, batch.present), w.reported, w.answered)
    if batch.covered is not None:
        pooled = st.median_covered(batch.probs, batch.covered)
    else:
        pooled = st.median(batch.probs, batch.present)
    return _classified(st.renormalise(pooled, batch.probs, batch.present), w)


def _trimmed_mean(batch: Batch, w: Weights, s: Settings) -> Fused:
    if s.n_labels == 0:
        score = st.trimmed_mean(batch.scores, batch.present, s.trim_proportion)
        return Fused(None, None, score, w.reported, w.answered)
    if batch.covered is not None:
        pooled = st.trimmed_mean_covered(batch.probs, batch.covered, s.trim_proportion)
    else:
        pooled = st.trimmed_mean(batch.probs, batch.present, s.trim_proportion)
    return _classified(st.renormalise(pooled, batch.probs, batch.present), w)


def _stacking(batch: Batch, w: Weights, s: Settings) -> Fused:
    """The meta-learner on complete requests; ``s.fallback`` on the others."""
    assert s.stacker is not None
    complete: BoolArray = np.all(batch.present, axis=1)
    rows = np.flatnonzero(complete)
    n = batch.n_requests
    if len(rows) == n:
        probs = np.zeros((n, s.n_labels))
        labels = np.zeros(n, dtype=np.int64)
        answered = complete.copy()
        weights = w.reported
    else:
        assert s.fallback is not None
        base = fuse(s.fallback, batch, s)
        assert base.probs is not None
        assert base.labels is not None
        probs, labels, answered = base.probs, base.labels, base.answered
        # Rows the fallback answered report the weights it used.
        weights = np.where(complete[:, None], w.reported, base.weights)
    if len(rows):
        stacked, stacked_labels = s.stacker.predict(meta_features(batch.probs[rows]))
        probs[rows] = stacked
        labels[rows] = stacked_labels
        answered[rows] = True
    return Fused(probs, labels, None, weights, answered, ~complete)


def _text(name: str) -> StrategyFunction:
    """The text strategy ``name`` over a batch: the members' weights of each request
    (renormalised ones are reported; the raw ones decide), none for a request with too
    few members."""

    def fused(batch: Batch, w: Weights, s: Settings) -> Fused:
        answered = w.answered
        rows = np.flatnonzero(answered)
        chosen: list[TextResult | None] = [None] * batch.n_requests
        if not len(rows):
            return Fused(None, None, None, w.reported, answered, texts=chosen)
        picked = rows.tolist()
        texts = fuse_text_batch([batch.texts[r] for r in picked], w.raw[rows], name, s.text)
        for r, result in zip(picked, texts, strict=True):
            chosen[r] = result
        answered = np.array([c is not None for c in chosen], dtype=np.bool_)
        return Fused(None, None, None, w.reported, answered, texts=chosen)

    fused.__name__ = f"_{name}"
    return fused


STRATEGIES: Mapping[str, Strategy] = MappingProxyType(
    {
        s.name: s
        for s in (
            Strategy("weighted_average", BOTH, True, _weighted_average),
            # The same numbers as weighted_average; the name says the label is the argmax.
            Strategy("soft_vote", CLASSIFICATION, True, _weighted_average),
            Strategy("hard_vote", CLASSIFICATION, True, _hard_vote),
            Strategy("geometric_mean", CLASSIFICATION, True, _geometric_mean),
            Strategy("median", BOTH, False, _median),
            Strategy("trimmed_mean", BOTH, False, _trimmed_mean),
            Strategy("stacking", CLASSIFICATION, True, _stacking, needs_stacker=True),
            Strategy(TEXT_VOTE, TEXT, True, _text(TEXT_VOTE)),
            Strategy(CONSENSUS, TEXT, True, _text(CONSENSUS)),
        )
    }
)


def task_of(labels: Sequence[str], task: str = "") -> Task:
    """The task of a configuration: ``[fusion] task`` when given (a loaded configuration
    always has it), else what ``[fusion] labels`` imply: none means scores."""
    if task in ("classification", "regression", "text"):
        return cast("Task", task)
    return "classification" if labels else "regression"


def names(task: Task | None = None, *, stacker: bool = True) -> tuple[str, ...]:
    """The strategies serving ``task`` (all when None), without those that need a
    stacker when ``stacker`` is False; in table order."""
    return tuple(
        s.name
        for s in STRATEGIES.values()
        if (task is None or task in s.tasks) and (stacker or not s.needs_stacker)
    )


def lookup(name: str, task: Task, key: str = "fusion.strategy") -> Strategy:
    """The strategy ``name`` for ``task``; ConfigError on ``key`` when there is none."""
    strategy = STRATEGIES.get(name)
    if strategy is None:
        raise ConfigError(key, name, f"must be one of {', '.join(STRATEGIES)}")
    if task not in strategy.tasks:
        if task == "regression" and "classification" in strategy.tasks:
            problem = "needs fusion.labels (a classification task)"
        else:
            problem = f"is not a {task} strategy; use one of {', '.join(names(task))}"
        raise ConfigError(key, name, problem)
    return strategy


def fuse(name: str, batch: Batch, settings: Settings) -> Fused:
    """Strategy ``name`` over ``batch`` (the name checked already by ``lookup``)."""
    strategy = STRATEGIES[name]
    return strategy.function(batch, weights_for(batch, strategy.weighted, settings), settings)
