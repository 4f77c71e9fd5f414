"""Trace context through the engine step: a member's ``traceparent`` header reaches the
fused result (every member's trace id) and the fused record's own header; a bad header is
counted, never a dead letter; the same input gives the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry

from tests.test_engine import MODELS, config, pred
from worker.config import build_config
from worker.engine import Engine, InRecord, Step
from worker.fusion import Fuser
from worker.metrics import Metrics
from worker.runtime.tally import tally
from worker.tracecontext import span_id_for

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"
HEADER_A = f"00-{TRACE_A}-00f067aa0ba902b7-00"
HEADER_B = f"00-{TRACE_B}-b7ad6b7169203331-01"
FUSED = Draft202012Validator(
    json.loads((Path(__file__).parents[1] / "schemas" / "fused.v1.json").read_text())
)


def rec(offset: int, rid: str, model: str, *headers: tuple[str, bytes]) -> InRecord:
    return InRecord("in", 0, offset, rid.encode(), pred(rid, model, 1000 + offset), None, headers)


def traced(rid: str = "r-1", start: int = 0) -> list[InRecord]:
    """One request: the first member untraced, then trace B, then trace A."""
    return [
        rec(start, rid, MODELS[0]),
        rec(start + 1, rid, MODELS[1], ("traceparent", HEADER_B.encode())),
        rec(start + 2, rid, MODELS[2], ("x", b"y"), ("traceparent", HEADER_A.encode())),
    ]


def live_step(records: list[InRecord]) -> Step:
    engine = Engine(config(), Fuser(config()))
    engine.open(0)
    return engine.step(records, now_ms=5)


def test_the_result_lists_every_traced_members_trace_id() -> None:
    """Each member with a valid header lists its own trace id; an untraced one has none;
    the result still validates against fused.v1.json."""
    step = live_step(traced())
    (result,) = step.results
    members = result["members"]
    assert "trace_id" not in members[MODELS[0]]
    assert members[MODELS[1]]["trace_id"] == TRACE_B
    assert members[MODELS[2]]["trace_id"] == TRACE_A
    FUSED.validate(result)


def test_the_fused_record_continues_the_first_traced_member() -> None:
    """The fused record's traceparent: trace id and flags of the first member (by
    arrival) that sent one, span id span_id_for(request_id, trace id)."""
    step = live_step(traced())
    (fused,) = step.fused_records
    assert fused.headers == [
        ("traceparent", f"00-{TRACE_B}-{span_id_for('r-1', TRACE_B)}-01".encode())
    ]
    assert step.outputs[0] == [fused]


def test_an_untraced_request_gets_no_header() -> None:
    """Without any member's header the fused record has no headers, as before."""
    step = live_step([rec(i, "r-1", m) for i, m in enumerate(MODELS)])
    assert step.fused_records[0].headers is None
    assert all("trace_id" not in m for m in step.results[0]["members"].values())


def test_a_bad_header_is_counted_and_the_event_still_fused() -> None:
    """A malformed header and a repeated one are counted; both events join and no dead
    letter is written."""
    records = [
        rec(0, "r-1", MODELS[0], ("traceparent", b"00-nope")),
        rec(1, "r-1", MODELS[1], ("traceparent", HEADER_A.encode()), ("traceparent", b"x")),
        rec(2, "r-1", MODELS[2]),
    ]
    step = live_step(records)
    assert step.bad_traceparents == 2
    assert not step.dead_letters
    assert step.results[0]["status"] == "complete"
    assert step.fused_records[0].headers is None


def test_the_body_trace_id_field_is_unchanged() -> None:
    """The v1 body field trace_id still gives the result's trace_id, independent of the
    headers."""
    value = orjson.dumps(
        {
            "request_id": "r-1",
            "model": MODELS[0],
            "ts": 1,
            "probs": [0.2, 0.3, 0.5],
            "trace_id": "t",
        }
    )
    records = [InRecord("in", 0, 0, b"r-1", value, None, (("traceparent", HEADER_A.encode()),))]
    records += [rec(i, "r-1", m) for i, m in enumerate(MODELS[1:], start=1)]
    (result,) = live_step(records).results
    assert result["trace_id"] == "t"
    assert result["members"][MODELS[0]]["trace_id"] == TRACE_A


def run_event_time(records: list[InRecord], cut: int) -> list[tuple[bytes | None, Any]]:
    engine = Engine(config(), Fuser(config()), event_time=True)
    steps = [engine.step(records[:cut]), engine.step(records[cut:]), engine.finish()]
    return [(r.value, r.headers) for s in steps for r in s.fused_records]


def test_the_same_input_gives_byte_identical_records() -> None:
    """Event time (fuse, replay): the fused records, headers included, are the same bytes
    however the input is split, run after run."""
    records = traced("r-1", 0) + traced("r-2", 3)
    records[-1:] = []  # r-2 is closed by finish(), not by completion
    runs = [run_event_time(records, cut) for cut in (0, 2, 4, len(records))]
    assert all(run == runs[0] for run in runs)
    assert [h for _, h in runs[0]] == [
        [("traceparent", f"00-{TRACE_B}-{span_id_for(rid, TRACE_B)}-01".encode())]
        for rid in ("r-1", "r-2")
    ]


def test_the_changelog_state_keeps_the_headers() -> None:
    """Exactly-once restore: a pending request's members keep their traceparent through
    pending_state and restore."""
    engine = Engine(config(), Fuser(config()))
    table = engine.open(0)
    engine.step(traced()[:2], now_ms=5)
    state = table.pending_state("r-1")
    assert state is not None
    other = Engine(config(), Fuser(config())).open(0)  # the same dependencies
    other.restore(orjson.loads(orjson.dumps(state)))
    assert other.pending_state("r-1") == state
    assert state["members"][MODELS[1]]["traceparent"] == HEADER_B


def test_the_worker_counts_bad_headers_in_its_metric() -> None:
    """The runtime's per-step tally adds Step.bad_traceparents to
    fusion_traceparent_invalid_total."""
    metrics = Metrics(CollectorRegistry(), MODELS, process_metrics=False)
    step = live_step([rec(0, "r-1", MODELS[0], ("traceparent", b"bad"))])
    tally(metrics, config(), step)
    assert metrics.registry.get_sample_value("fusion_traceparent_invalid_total") == 1.0


def test_a_text_result_lists_every_traced_members_trace_id() -> None:
    """The text task's members list their trace ids as classification members do."""
    cfg = build_config(
        {
            "models": [{"name": m} for m in MODELS],
            "fusion": {"task": "text", "strategy": "consensus"},
        }
    )
    engine = Engine(cfg, Fuser(cfg))
    engine.open(0)
    records = [
        InRecord(
            "in",
            0,
            i,
            b"r-1",
            orjson.dumps({"request_id": "r-1", "model": m, "ts": 1000 + i, "text": "a cat"}),
            None,
            headers,
        )
        for i, (m, headers) in enumerate(
            zip(MODELS, [(), (("traceparent", HEADER_B.encode()),), ()], strict=True)
        )
    ]
    (result,) = engine.step(records, now_ms=5).results
    assert result["members"][MODELS[1]]["trace_id"] == TRACE_B
    assert "trace_id" not in result["members"][MODELS[0]]
    FUSED.validate(result)
