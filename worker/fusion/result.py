"""The fused result of each request as a JSON-ready dict (``schemas/fused.v1.json``).

The numbers are computed for the whole batch as arrays; here they are turned into
Python lists once (``tolist``: plain floats, never numpy scalars) and each request's dict
is assembled with plain Python, the only per-request work of the fusion. What is the
same for every request of a batch (the strategy, the label names, which labels each
model leaves uncovered) is prepared once per batch.

The key order of a result, and which optional keys are absent rather than null, are
part of the output's bytes (``fusion-worker fuse`` gives byte-identical files); a test
compares them with a frozen copy of the earlier builder.

``result_json`` turns a result into the bytes the output topic carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import orjson

from worker.events import FinishedRequest, PredictionEvent
from worker.fusion.batch import BoolArray, FloatArray, IntArray
from worker.fusion.text import TextResult

COMPLETE = "complete"
PARTIAL = "partial"
INSUFFICIENT = "insufficient"
DECIDED = "decided"


@dataclass(frozen=True, slots=True)
class Fused:
    """What a strategy computed for n requests.

    probs : ndarray of shape (n, k), or None for scores
    labels : ndarray of shape (n,), the fused label index (classification)
    scores : ndarray of shape (n,), the fused score (regression)
    weights : ndarray of shape (n, m), the weight each member had (0 when missing)
    answered : ndarray of shape (n,), bool; False: status ``insufficient``
    fallback : ndarray of shape (n,), bool; True where the fallback strategy answered
    texts : the text task's chosen answer per request (None where not answered)
    """

    probs: FloatArray | None
    labels: IntArray | None
    scores: FloatArray | None
    weights: FloatArray
    answered: BoolArray
    fallback: BoolArray | None = None
    texts: list[TextResult | None] | None = None


Roster = list[tuple[int, str, PredictionEvent]]

# msgspec's encoder gives orjson's bytes for every JSON value but a float of magnitude
# >= 1e16, which it writes with an unsigned exponent (1e16, orjson 1e+16). It costs far
# less per call: orjson 3.13 starts each output in a fresh buffer of several KiB and
# the bytes it returns keep it (8 KiB held per 800-byte result), msgspec's are exact.
_encode = msgspec.json.Encoder().encode
_EXPONENT_FROM = 1e16


def result_json(result: dict[str, Any]) -> bytes:
    """The JSON bytes of one result of this module, exactly as ``orjson.dumps`` writes
    them (the output format so far). Only a regression result (``score``) can hold a
    float as large as 1e16: one that does goes through orjson."""
    if "score" in result and not _small_scores(result):
        return orjson.dumps(result)
    return _encode(result)


def _small_scores(result: dict[str, Any]) -> bool:
    """Whether the fused score and every member's score are below 1e16 in magnitude."""
    score = result["score"]
    if score is not None and not -_EXPONENT_FROM < score < _EXPONENT_FROM:
        return False
    return all(-_EXPONENT_FROM < m["score"] < _EXPONENT_FROM for m in result["members"].values())


def _roster(
    events: Mapping[str, PredictionEvent], models: Sequence[str]
) -> tuple[Roster, list[str], dict[str, str]]:
    """A request's members in the configured model order, as (index, name, event); the
    models that did not report; the model versions the members named. Every task's
    result lists its members, missing models and versions this way."""
    present: Roster = []
    missing: list[str] = []
    versions: dict[str, str] = {}
    for j, name in enumerate(models):
        ev = events.get(name)
        if ev is None:
            missing.append(name)
        else:
            present.append((j, name, ev))
            if ev.model_version is not None:
                versions[name] = ev.model_version
    return present, missing, versions


def _trace_id(events: Mapping[str, PredictionEvent]) -> str | None:
    """The trace id of the first member to arrive that has one (members keep arrival order)."""
    for ev in events.values():
        if ev.trace_id is not None:
            return ev.trace_id
    return None


def member_columns(
    fused: Fused,
    member_probs: FloatArray,
    member_labels: IntArray,
    strategy: str,
    scored_probs: FloatArray | None,
) -> tuple[FloatArray, FloatArray]:
    """Each request's ``agreement`` (n,), the weight share of the members that chose the
    fused label, and each member's ``contribution`` (n, m) to the fused label's score
    (see ``classification_results``)."""
    assert fused.labels is not None
    chosen = member_labels == fused.labels[:, None]
    # Renormalised weights can sum to 1 + 1 ulp; a share is at most 1.
    agreement: FloatArray = np.minimum((fused.weights * chosen).sum(axis=1), 1.0)
    if strategy == "hard_vote":
        share = chosen.astype(np.float64)
    else:
        scored = member_probs if scored_probs is None else scored_probs
        # Each member's probability of its request's fused label: one gather
        # (take_along_axis gives the same, through several Python-level numpy calls).
        share = scored[np.arange(len(fused.labels)), :, fused.labels]
    contribution: FloatArray = fused.weights * share
    return agreement, contribution


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
    # Index -1 (an abstaining member) reads the trailing None.
    names: list[str | None] = [*label_names, None]
    probs = fused.probs.tolist()
    winner = fused.labels.tolist()
    confidence = fused.probs.max(axis=1).tolist()
    weights = fused.weights.tolist()
    agreement_a, contribution_a = member_columns(
        fused, member_probs, member_labels, strategy, scored_probs
    )
    agreement = agreement_a.tolist()
    answered = fused.answered.tolist()
    by_fallback = fused.fallback.tolist() if fused.fallback is not None else [False] * len(answered)
    m_probs = member_probs.tolist()
    contribution = contribution_a.tolist()
    uncovered = (
        [[k for k, c in enumerate(row) if not c] for row in cover.tolist()]
        if cover is not None
        else None
    )
    m_labels = member_labels.tolist()
    out: list[dict[str, Any]] = []
    order = list(enumerate(models))
    for i, req in enumerate(finished):
        events = req.members
        w, ml, mp, share_i = weights[i], m_labels[i], m_probs[i], contribution[i]
        ok = answered[i]
        # _roster, inlined: this loop is the fusion's only per-request Python work.
        members: dict[str, Any] = {}
        missing: list[str] = []
        versions: dict[str, str] = {}
        for j, name in order:
            ev = events.get(name)
            if ev is None:
                missing.append(name)
                continue
            if ev.model_version is not None:
                versions[name] = ev.model_version
            label = ml[j]
            if ok and label >= 0 and uncovered is None and ev.traceparent is None:
                # The common member, as one literal (the keys in the order below).
                if ev.probs is not None:
                    members[name] = {
                        "weight": w[j],
                        "label": names[label],
                        "probs": mp[j],
                        "contribution": share_i[j],
                    }
                else:
                    members[name] = {
                        "weight": w[j],
                        "label": names[label],
                        "contribution": share_i[j],
                    }
                continue
            member: dict[str, Any] = {"weight": w[j], "label": names[label]}
            if ev.probs is not None:
                p = mp[j]
                if uncovered is not None:
                    for k in uncovered[j]:
                        p[k] = None
                member["probs"] = p
            if ok and label >= 0:  # an abstaining member contributes nothing
                member["contribution"] = share_i[j]
            if ev.traceparent is not None:
                member["trace_id"] = ev.traceparent[3:35]
            members[name] = member
        fused_ts = req.fused_ts
        if ok:
            status = (DECIDED if req.decided else PARTIAL) if missing else COMPLETE
            shown: tuple[Any, ...] = (
                label_names[winner[i]],
                probs[i],
                label_names.copy(),
                confidence[i],
                agreement[i],
            )
        else:  # no prediction: those fields are null
            status, shown = INSUFFICIENT, (None,) * 5
        label, p_i, labels_i, confidence_i, agreement_i = shown
        result: dict[str, Any] = {
            "request_id": req.request_id,
            "strategy": strategy,
            "status": status,
            "label": label,
            "probs": p_i,
            "labels": labels_i,
            "confidence": confidence_i,
            "agreement": agreement_i,
            "members": members,
            "missing": missing,
            "first_ts": req.first_ts,
            "fused_ts": fused_ts,
            "latency_ms": fused_ts - req.opened_ms,
            "model_versions": versions,
            "trace_id": _trace_id(events),
        }
        if ok and by_fallback[i]:
            result["fallback"] = fallback
        if calibration is not None:
            result["calibration"] = calibration
        out.append(result)
    return out


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
        present, missing, versions = _roster(events, models)
        w, ms = weights[i], m_scores[i]
        members: dict[str, Any] = {}
        for j, name, ev in present:
            member: dict[str, Any] = {"weight": w[j], "score": ms[j]}
            if ev.traceparent is not None:
                member["trace_id"] = ev.traceparent[3:35]
            members[name] = member
        ok = answered[i]
        fused_ts = req.fused_ts
        out.append(
            {
                "request_id": req.request_id,
                "strategy": strategy,
                "status": (PARTIAL if missing else COMPLETE) if ok else INSUFFICIENT,
                "score": scores[i] if ok else None,
                "confidence": None,
                "agreement": None,
                "members": members,
                "missing": missing,
                "first_ts": req.first_ts,
                "fused_ts": fused_ts,
                "latency_ms": fused_ts - req.opened_ms,
                "model_versions": versions,
                "trace_id": _trace_id(events),
            }
        )
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
        present, missing, versions = _roster(events, models)
        chosen = fused.texts[i]
        w = weights[i]
        members: dict[str, Any] = {}
        for j, name, ev in present:
            member: dict[str, Any] = {"weight": w[j], "text": ev.text}
            if chosen is not None:
                member["similarity"] = chosen.similarities[j]
            if ev.confidence is not None:
                member["confidence"] = ev.confidence
            if ev.traceparent is not None:
                member["trace_id"] = ev.traceparent[3:35]
            members[name] = member
        if chosen is None:
            status, text, by, agreement = INSUFFICIENT, None, None, None
        else:
            status = PARTIAL if missing else COMPLETE
            text, by, agreement = chosen.text, models[chosen.chosen], chosen.agreement
        fused_ts = req.fused_ts
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
                "fused_ts": fused_ts,
                "latency_ms": fused_ts - req.opened_ms,
                "model_versions": versions,
                "trace_id": _trace_id(events),
            }
        )
    return out
