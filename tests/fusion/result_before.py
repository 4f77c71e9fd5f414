"""The result builder as it was before results were encoded with msgspec and assembled
through one shared member roster: a frozen copy of ``classification_results``,
``regression_results`` and ``text_results`` (worker/fusion/result.py at that time), and a
Fuser that builds its results with them. The byte-for-byte test of the output
(tests/fusion/test_result_bytes.py) compares the current code with it. Do not edit it to
follow the code: it is the reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.events import FinishedRequest
from worker.fusion import Fuser
from worker.fusion.batch import Batch, BoolArray, FloatArray, IntArray, build_batch
from worker.fusion.result import COMPLETE, DECIDED, INSUFFICIENT, PARTIAL, Fused


class ReferenceFuser(Fuser):
    """A Fuser whose results come from the frozen builders below (the same batch arrays,
    calibration and strategy as ``Fuser``)."""

    def fuse_arrays(
        self, finished: Sequence[FinishedRequest]
    ) -> tuple[list[dict[str, Any]], Batch, Fused]:
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


def _trace_id(req: FinishedRequest) -> str | None:
    """The trace id of the first member to arrive that has one (members keep arrival order)."""
    for ev in req.members.values():
        if ev.trace_id is not None:
            return ev.trace_id
    return None


def classification_results(
    finished: Sequence[FinishedRequest],
    models: Sequence[str],
    labels: Sequence[str],
    strategy: str,
    fused: Fused,
    member_probs: FloatArray,
    member_labels: IntArray,
    fallback: str | None = None,
    scored_probs: FloatArray | None = None,
    cover: BoolArray | None = None,
    calibration: str | None = None,
) -> list[dict[str, Any]]:
    """One result per request, in input order. ``member_probs`` (n, m, k) and
    ``member_labels`` (n, m) are the batch's (one-hot / sent label for label-only members).
    ``cover`` (m, k): which labels each model covers, when some model does not cover all;
    a member's probs show null for the labels it does not cover. A member that reported
    but abstained (label -1: no mass on the fused labels) shows label null.

    Each member of an answered request carries its ``contribution`` to the fused label's
    score: its weight times its probability of the fused label, from ``scored_probs``
    (n, m, k), the probabilities the strategy fused (after calibration; default
    ``member_probs``); in hard_vote, its weight when it voted for the fused label, else 0.
    For weighted_average, soft_vote and hard_vote the contributions add up to the fused
    label's probability. A request the join decided early (``decided``) has status
    ``decided``; ``calibration`` (the applied calibration's id) is named in every result
    when set."""
    assert fused.probs is not None
    assert fused.labels is not None
    label_names = list(labels)
    probs = fused.probs.tolist()
    winner = fused.labels.tolist()
    confidence = fused.probs.max(axis=1).tolist()
    weights = fused.weights.tolist()
    chosen = member_labels == fused.labels[:, None]
    # Renormalised weights can sum to 1 + 1 ulp; a share is at most 1.
    agreement = np.minimum((fused.weights * chosen).sum(axis=1), 1.0).tolist()
    answered = fused.answered.tolist()
    by_fallback = fused.fallback.tolist() if fused.fallback is not None else None
    m_probs = member_probs.tolist()
    if strategy == "hard_vote":
        share = chosen.astype(np.float64)
    else:
        scored = member_probs if scored_probs is None else scored_probs
        share = np.take_along_axis(scored, fused.labels[:, None, None], axis=2)[:, :, 0]
    contribution = (fused.weights * share).tolist()
    uncovered = (
        [[k for k, c in enumerate(row) if not c] for row in cover.tolist()]
        if cover is not None
        else None
    )
    m_labels = member_labels.tolist()
    out: list[dict[str, Any]] = []
    for i, req in enumerate(finished):
        events = req.members
        w, ml, mp = weights[i], m_labels[i], m_probs[i]
        members: dict[str, Any] = {}
        missing: list[str] = []
        versions: dict[str, str] = {}
        for j, name in enumerate(models):
            ev = events.get(name)
            if ev is None:
                missing.append(name)
                continue
            member: dict[str, Any] = {
                "weight": w[j],
                "label": label_names[ml[j]] if ml[j] >= 0 else None,
            }
            if ev.probs is not None:
                member["probs"] = mp[j]
                if uncovered is not None and uncovered[j]:
                    for k in uncovered[j]:
                        mp[j][k] = None
            if answered[i] and ml[j] >= 0:  # an abstaining member contributes nothing
                member["contribution"] = contribution[i][j]
            if ev.traceparent is not None:
                member["trace_id"] = ev.traceparent[3:35]
            members[name] = member
            if ev.model_version is not None:
                versions[name] = ev.model_version
        if answered[i]:
            result = {
                "request_id": req.request_id,
                "strategy": strategy,
                "status": _answered_status(req, missing),
                "label": label_names[winner[i]],
                "probs": probs[i],
                "labels": label_names.copy(),
                "confidence": confidence[i],
                "agreement": agreement[i],
            }
        else:
            result = {
                "request_id": req.request_id,
                "strategy": strategy,
                "status": INSUFFICIENT,
                "label": None,
                "probs": None,
                "labels": None,
                "confidence": None,
                "agreement": None,
            }
        result["members"] = members
        result["missing"] = missing
        result["first_ts"] = req.first_ts
        result["fused_ts"] = req.fused_ts
        result["latency_ms"] = req.fused_ts - req.opened_ms
        result["model_versions"] = versions
        result["trace_id"] = _trace_id(req)
        if by_fallback is not None and by_fallback[i] and answered[i]:
            result["fallback"] = fallback
        if calibration is not None:
            result["calibration"] = calibration
        out.append(result)
    return out


def _answered_status(req: FinishedRequest, missing: list[str]) -> str:
    if not missing:
        return COMPLETE
    return DECIDED if req.decided else PARTIAL


def regression_results(
    finished: Sequence[FinishedRequest],
    models: Sequence[str],
    strategy: str,
    fused: Fused,
    member_scores: FloatArray,
) -> list[dict[str, Any]]:
    """One result per request, in input order; ``member_scores`` (n, m) is the batch's."""
    assert fused.scores is not None
    scores = fused.scores.tolist()
    weights = fused.weights.tolist()
    answered = fused.answered.tolist()
    m_scores = member_scores.tolist()
    out: list[dict[str, Any]] = []
    for i, req in enumerate(finished):
        events = req.members
        w, ms = weights[i], m_scores[i]
        members: dict[str, Any] = {}
        missing: list[str] = []
        versions: dict[str, str] = {}
        for j, name in enumerate(models):
            ev = events.get(name)
            if ev is None:
                missing.append(name)
                continue
            members[name] = {"weight": w[j], "score": ms[j]}
            if ev.traceparent is not None:
                members[name]["trace_id"] = ev.traceparent[3:35]
            if ev.model_version is not None:
                versions[name] = ev.model_version
        result = {
            "request_id": req.request_id,
            "strategy": strategy,
            "status": (PARTIAL if missing else COMPLETE) if answered[i] else INSUFFICIENT,
            "score": scores[i] if answered[i] else None,
            "confidence": None,
            "agreement": None,
            "members": members,
            "missing": missing,
            "first_ts": req.first_ts,
            "fused_ts": req.fused_ts,
            "latency_ms": req.fused_ts - req.opened_ms,
            "model_versions": versions,
            "trace_id": _trace_id(req),
        }
        out.append(result)
    return out


def text_results(
    finished: Sequence[FinishedRequest], models: Sequence[str], strategy: str, fused: Fused
) -> list[dict[str, Any]]:
    """One text result per request, in input order (``fused.texts`` set). Each member
    shows its own text, its weight and, when answered, its similarity to the fused
    text; its ``confidence`` when it sent one."""
    assert fused.texts is not None
    weights = fused.weights.tolist()
    out: list[dict[str, Any]] = []
    for i, req in enumerate(finished):
        events = req.members
        chosen = fused.texts[i]
        w = weights[i]
        members: dict[str, Any] = {}
        missing: list[str] = []
        versions: dict[str, str] = {}
        for j, name in enumerate(models):
            ev = events.get(name)
            if ev is None:
                missing.append(name)
                continue
            member: dict[str, Any] = {"weight": w[j], "text": ev.text}
            if chosen is not None:
                member["similarity"] = chosen.similarities[j]
            if ev.confidence is not None:
                member["confidence"] = ev.confidence
            # Added after the freeze: text members list their trace id as the others do.
            if ev.traceparent is not None:
                member["trace_id"] = ev.traceparent[3:35]
            members[name] = member
            if ev.model_version is not None:
                versions[name] = ev.model_version
        if chosen is None:
            status, text, by, agreement = INSUFFICIENT, None, None, None
        else:
            status = PARTIAL if missing else COMPLETE
            text, by, agreement = chosen.text, models[chosen.chosen], chosen.agreement
        out.append(
            {
                "request_id": req.request_id,
                "strategy": strategy,
                "status": status,
                "text": text,
                "chosen": by,
                "confidence": None,
                "agreement": agreement,
                "members": members,
                "missing": missing,
                "first_ts": req.first_ts,
                "fused_ts": req.fused_ts,
                "latency_ms": req.fused_ts - req.opened_ms,
                "model_versions": versions,
                "trace_id": _trace_id(req),
            }
        )
    return out
