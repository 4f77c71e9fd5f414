"""The pending-state export and restore of a ``JoinTable`` for the exactly-once
changelog: one pending request to a JSON-ready dict (``export_state``) and back
(``pending_from_state``), the members' events as the table keeps them. Pure code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from worker.events import (
    LabelEvent,
    PredictionEvent,
    ProbsEvent,
    ScoreEvent,
    TextEvent,
    pack_probs,
    unpack_probs,
)
from worker.join_pending import UNMARKED, _Pending

STATE_VERSION = 1

# The JSON of an ``export_state`` snapshot, as the changelog holds it. msgspec: a tenth
# of orjson.dumps's fixed cost per call (the compiled table writes the same bytes
# itself); orjson reads them back (restore).
encode_state = msgspec.json.Encoder().encode


def export_state(
    request_id: str,
    opened_ms: int,
    models: Sequence[str],
    arrived: list[tuple[int, PredictionEvent]],
    first_ts: int,
    deadline_ms: int,
    deps: dict[str, Any] | None,
) -> dict[str, Any]:
    """The snapshot ``JoinTable.pending_state`` returns; ``arrived``: the request's
    (model position, event) pairs in arrival order."""
    members = {models[i]: _event_state(ev) for i, ev in arrived}
    state: dict[str, Any] = {
        "v": STATE_VERSION,
        "request_id": request_id,
        "opened_ms": opened_ms,
        "deadline_ms": deadline_ms,
        "first_ts": first_ts,
        "members": members,
    }
    if deps is not None:
        state["deps"] = deps
    return state


def pending_from_state(
    state: dict[str, Any], index: Mapping[str, int], models: Sequence[str]
) -> tuple[str, _Pending, int, int]:
    """The request id, the re-opened request (without source offsets), the first_ts
    and the deadline of an ``export_state`` snapshot. Raises ValueError naming the bad
    field for a state a table of ``models`` cannot take (another version, a model it
    does not know)."""
    base_digits = len(models) + 1
    try:
        if state["v"] != STATE_VERSION:
            raise ValueError(f"pending state version {state['v']!r}, expected {STATE_VERSION}")
        rid = state["request_id"]
        p = _Pending((None,) * (len(models) + 1))  # the events, then the opening time
        p.arrival = 0
        for name, fields in state["members"].items():  # in arrival order
            if name not in index:
                raise ValueError(
                    f"pending state of {rid!r} has model {name!r}, not one of {list(models)}"
                )
            i = index[name]
            p[i] = _event_from_state(rid, name, fields)
            p.arrival = p.arrival * base_digits + i + 1
        if all(ev is None for ev in p):
            raise ValueError(f"pending state of {rid!r} has no members")
        p.opened_ms = int(state["opened_ms"])
        deadline_ms = int(state["deadline_ms"])
        first_ts = int(state["first_ts"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed pending state {state!r}: {exc!r}") from None
    p.low = 0
    p.gap = UNMARKED
    return rid, p, first_ts, deadline_ms


def _event_state(ev: PredictionEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"ts": ev.ts}
    if ev.probs is not None:
        out["probs"] = unpack_probs(ev.probs)
    elif ev.label is not None:
        out["label"] = ev.label
    elif ev.text is not None:
        out["text"] = ev.text
        if ev.confidence is not None:
            out["confidence"] = ev.confidence
    else:
        out["score"] = ev.score
    if ev.model_version is not None:
        out["model_version"] = ev.model_version
    if ev.trace_id is not None:
        out["trace_id"] = ev.trace_id
    if ev.traceparent is not None:
        out["traceparent"] = ev.traceparent
    return out


def _event_from_state(rid: str, model: str, fields: dict[str, Any]) -> PredictionEvent:
    common = (rid, model, int(fields["ts"]), fields.get("model_version"), fields.get("trace_id"))
    event: PredictionEvent
    if (probs := fields.get("probs")) is not None:
        event = ProbsEvent(*common, pack_probs([float(x) for x in probs]))
    elif (label := fields.get("label")) is not None:
        event = LabelEvent(*common, int(label))
    elif (text := fields.get("text")) is not None:
        confidence = fields.get("confidence")
        event = TextEvent(*common, str(text), None if confidence is None else float(confidence))
    elif (score := fields.get("score")) is not None:
        event = ScoreEvent(*common, float(score))
    else:  # no prediction (an event built without one): the base class, by keyword
        event = PredictionEvent(*common[:3], model_version=common[3], trace_id=common[4])
    traceparent = fields.get("traceparent")
    return event if traceparent is None else event.traced(traceparent)
