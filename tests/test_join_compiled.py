"""The compiled live join table (``worker/join_compiled.py`` over ``native/src/join.rs``)
against the Python ``JoinTable``: the same outcomes, closed requests, deadlines, offsets
and exported state for every sequence of calls; the engine's output records the same
with either; and where the engine uses which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import kit
from worker import native
from worker.config import Config, build_config
from worker.engine import Engine
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.join import JoinTable
from worker.join_compiled import CompiledJoinTable, table_for

MODELS = ("a", "b", "c")
SOURCE = "in"


def event(rid: str, model: str, ts: int, trace: str | None, version: str | None) -> PredictionEvent:
    return PredictionEvent(
        request_id=rid,
        model=model,
        ts=ts,
        probs=(0.25, 0.75),
        trace_id=trace,
        model_version=version,
    )


def closed(t: JoinTable) -> list[tuple[Any, ...]]:
    """The drained requests with everything a caller reads: fields, member order and
    events; then the offset spans taken."""
    return [
        (
            f,
            list(f.members),
            [(e.request_id, e.ts, e.trace_id) for e in f.members.values()],
        )
        for f in t.drain()
    ] + [t.take_spans()]


def state(rid: str, members: list[tuple[str, int]], opened: int, deadline: int) -> dict[str, Any]:
    return {
        "v": 1,
        "request_id": rid,
        "opened_ms": opened,
        "deadline_ms": deadline,
        "first_ts": members[0][1] - 1,  # not the first member's: a removed model's
        "members": {m: {"ts": ts, "probs": [0.5, 0.5], "trace_id": "x"} for m, ts in members},
    }


rids = st.sampled_from(["r1", "r2", "r3", "r4", "r5", "é", "\ud800"])
models = st.sampled_from(MODELS)
calls = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            rids,
            models,
            st.integers(0, 5),  # ts
            st.integers(0, 3),  # now advance
            st.integers(-1, 40),  # offset (-1: untracked)
            st.sampled_from([None, "t1", "t2"]),
            st.sampled_from([None, "v1", "v2"]),
        ),
        st.tuples(st.just("expire"), st.integers(0, 150)),
        st.tuples(st.just("remember"), st.lists(rids, max_size=3)),
        st.tuples(
            st.just("restore"),
            rids,
            st.lists(models, min_size=1, max_size=3, unique=True),
            st.integers(0, 200),
        ),
        st.tuples(st.just("close_all")),
    ),
    max_size=50,
)


@dataclass
class Observed:
    """Everything a table answered, after each call."""

    answers: list[object]


def attempt(call: Callable[[], object]) -> object:
    """What ``call`` returns, or the type of what it raised (a state holding a lone
    surrogate has no JSON)."""
    try:
        return call()
    except UnicodeEncodeError as exc:
        return type(exc)


def run(t: JoinTable, sequence: list[tuple[Any, ...]]) -> list[object]:
    now = 0
    out: list[object] = []
    for name, *args in sequence:
        if name == "add":
            rid, model, ts, advance, offset, trace, version = args
            now += advance
            # Each table gets events of its own: the table may slim the ones it keeps.
            answer: object = t.add(event(rid, model, ts, trace, version), now, SOURCE, offset)
        elif name == "expire":
            now += args[0]
            answer = t.expire(now)
        elif name == "remember":
            answer = t.remember_fused(args[0], now)
        elif name == "restore":
            rid, members, deadline = args
            answer = t.restore(state(rid, [(m, i) for i, m in enumerate(members)], now, deadline))
        else:
            answer = t.close_all(now)
        out.append(
            (
                answer,
                closed(t),
                len(t),
                [r in t for r in ("r1", "é", "\ud800")],
                t.next_deadline_ms(),
                t.oldest_opened_ms(),
                t.oldest_offsets(),
                [t.pending_state(r) for r in ("r1", "r2", "é")],
                attempt(lambda: t.pending_json(["r3", "é", "r1", "r1", "\ud800", "zz"])),
            )
        )
    return out


@settings(max_examples=400, deadline=None)
@given(sequence=calls, memory_count=st.sampled_from([0, 2, 100]))
def test_the_compiled_table_answers_as_the_python_one(
    sequence: list[tuple[Any, ...]], memory_count: int
) -> None:
    """Adds (duplicates, late ones, offsets going back, trace ids and versions to share),
    deadlines, closing everything, remembered ids, restored states (complete ones close
    at once): after each call the same answer, closed requests, size, next deadline,
    oldest opening and offset, exported state, and the changelog JSON of the pending
    ones among some ids."""
    args = (MODELS, 100, 50, memory_count)
    assert run(CompiledJoinTable(*args), sequence) == run(JoinTable(*args), sequence)


def test_a_closed_request_carries_what_the_python_table_gives() -> None:
    """A complete request: members in arrival order, first_ts the first member's, the
    offset span widened by the closing event (a re-read below the others), a later
    member that left it pending slimmed as in Python."""
    t = CompiledJoinTable(MODELS, 100, 50, 10)
    assert t.add(event("r", "b", 7, "t", "v"), 10, SOURCE, 5) == "accepted"
    assert t.add(event("r", "c", 7, "t", "v"), 11, SOURCE, 8) == "accepted"
    assert t.add(event("r", "a", 9, "t", "v"), 12, SOURCE, 3) == "accepted"  # re-read
    [done] = t.drain()
    assert done == FinishedRequest("r", done.members, 7, 10, 12, False)
    assert list(done.members) == ["b", "c", "a"]
    assert t.take_spans() == {SOURCE: [(3, 8)]}
    b, c, a = done.members.values()
    assert c.request_id is b.request_id
    assert c.ts is b.ts
    assert c.trace_id is None
    assert a.trace_id == "t"  # the last member closes it: kept as it came


def test_an_unknown_model_is_refused_as_the_python_table_does() -> None:
    """An event of a model the table does not join raises the same ValueError."""
    messages = []
    for t in (CompiledJoinTable(MODELS, 100, 50, 10), JoinTable(MODELS, 100, 50, 10)):
        with pytest.raises(ValueError, match="is not one of") as caught:
            t.add(event("r", "z", 1, None, None), 1)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "model 'z' is not one of the join's models ['a', 'b', 'c']"


def test_offsets_of_a_second_source_are_refused() -> None:
    """The compiled table tracks one source's offsets; another source's is an error
    naming both (the engine gives it only single-topic input)."""
    t = CompiledJoinTable(MODELS, 100, 50, 10)
    t.add(event("r", "a", 1, None, None), 1, "one", 0)
    with pytest.raises(ValueError, match="'one'; got 'two'"):
        t.add(event("r", "b", 1, None, None), 1, "two", 0)


def config(**kafka: Any) -> Config:
    return build_config(
        {
            "models": [
                {"name": m, "weight": w} for m, w in zip(kit.MODELS, kit.WEIGHTS, strict=True)
            ],
            "fusion": {"strategy": "soft_vote", "labels": list(kit.LABELS)},
            "kafka": kafka,
        }
    )


def test_the_engine_uses_the_compiled_table_only_where_it_applies() -> None:
    """Live single-topic input: compiled; event time, early decision or two input topics:
    the Python table."""
    cfg = config()
    assert type(Engine(cfg, Fuser(cfg)).open(0)) is CompiledJoinTable
    assert type(Engine(cfg, Fuser(cfg), event_time=True).open(0)) is JoinTable
    two = config(input_topics=["p1", "p2"])
    assert type(Engine(two, Fuser(two)).open(0)) is JoinTable
    early = build_config({**cfg_dict(), "join": {"early_decision": True}})
    assert type(table_for(early, event_time=False, decider=lambda m: None, deps=None)) is JoinTable


def cfg_dict() -> dict[str, Any]:
    return {
        "models": [{"name": m} for m in kit.MODELS],
        "fusion": {"labels": list(kit.LABELS)},
    }


@dataclass(slots=True)
class Rec:
    offset: int
    key: bytes
    value: bytes
    timestamp: int
    headers: list[tuple[str, bytes]]


def records() -> list[Rec]:
    """The throughput benchmark's events, with a duplicate, an invalid event, a traced
    one, a late one and one Python decodes (an unknown field) among them."""
    values = [v for _, v in kit.events(300, "eq")]
    values[10] = values[5]  # a duplicate of an accepted event
    values[20] = b"{not json"
    values[350] = values[40]  # a member of a closed request: late
    values[30] = values[30].replace(b'"ts"', b'"labels":["negative","neutral","positive"],"ts"')
    out = [Rec(i, b"", v, kit.TS0, []) for i, v in enumerate(values)]
    out[25].headers = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    return out


def outputs(engine: Engine, recs: list[Rec]) -> list[Any]:
    engine.open(0)
    steps = [
        engine.step_runs([(("in", 0), recs[i : i + 64])], now_ms=i) for i in range(0, len(recs), 64)
    ]
    steps.append(engine.step_runs([], now_ms=10_000))
    return [
        (
            [(o.topic, o.key, o.value, o.headers) for rs in s.outputs.values() for o in rs],
            s.accepted,
            s.other,
            s.dead_letters,
            s.touched,
            s.positions,
        )
        for s in steps
    ]


def test_the_engine_writes_the_same_records_with_either_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live steps over the same records (invalid, duplicate, late, traced and
    Python-decoded ones among them): the same output records, byte for byte, and the
    same counts, with the compiled table and with the Python one."""
    cfg = config(late_topic="late")
    compiled = outputs(Engine(cfg, Fuser(cfg), results=False, track_touched=True), records())
    monkeypatch.setattr(native, "JoinCore", None)
    python = Engine(cfg, Fuser(cfg), results=False, track_touched=True)
    assert type(python.open(0)) is JoinTable
    assert compiled == outputs(python, records())
    assert any(s[2] for s in compiled)  # duplicates and late events seen
    assert any(s[3] for s in compiled)  # dead letters seen
