"""The compiled table's changelog states (``CompiledJoinTable.pending_json``, written by
``native/src/state.rs``): byte for byte what msgspec writes for ``pending_state``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.events import PredictionEvent
from worker.join_compiled import CompiledJoinTable
from worker.join_state import encode_state

pytestmark = pytest.mark.skipif(native.JoinCore is None, reason="no compiled join")

MODELS = ("a", "b", "c")
RIDS = ["r1", "r2", "é", 'q"\\\n']
text = st.text(max_size=8)  # quotes, backslashes, control characters, any code point
floats = st.floats(allow_nan=True, allow_infinity=True)
optional = st.none() | text
prediction = st.one_of(
    st.fixed_dictionaries({"probs": st.lists(floats, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"label": st.integers(-1, 5)}),
    st.fixed_dictionaries({"score": floats}),
    # A text answer may hold a lone surrogate, which has no UTF-8 (and so no JSON).
    st.fixed_dictionaries({"text": text | st.just("a\ud800"), "confidence": st.none() | floats}),
    st.just({}),  # no prediction: the base class, its score null
)
events = st.lists(
    st.tuples(
        st.sampled_from(RIDS),
        st.sampled_from(MODELS),
        st.integers(-(2**62), 2**62),
        prediction,
        optional,
        optional,
        st.none() | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(adds=events, own_first_ts=st.none() | st.integers(0, 2**40))
def test_the_written_state_is_msgspecs_encoding_of_pending_state(
    adds: list[tuple[Any, ...]], own_first_ts: int | None
) -> None:
    """Any kind of member (probabilities with NaN and infinities, a label, a score or
    none, text with or without confidence), optional version, trace id and traceparent,
    any text in names and values, a restored request's own first_ts: the bytes written
    are msgspec's for the exported dict, or the same error where it has none (a lone
    surrogate)."""
    table = CompiledJoinTable(MODELS, 10**9, 60_000, 100)
    for rid, model, ts, fields, version, trace, parent in adds:
        event = PredictionEvent(
            request_id=rid,
            model=model,
            ts=ts,
            model_version=version,
            trace_id=trace,
            traceparent=parent,
            **fields,
        )
        table.add(event, 0)
    table.drain()
    if own_first_ts is not None and (state := table.pending_state(RIDS[0])) is not None:
        table.restore({**state, "first_ts": own_first_ts})
    pending = [rid for rid in RIDS if rid in table]
    try:
        expected = [(rid, encode_state(table.pending_state(rid))) for rid in pending]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            table.pending_json(RIDS)
        return
    assert table.pending_json(RIDS) == expected


def test_a_state_with_deps_ends_with_them() -> None:
    """The configuration a state depends on (``deps``, as the live worker always has)
    closes the state, as msgspec writes the exported dict."""
    deps = {"labels": ["x", "é"], "models": list(MODELS), "strategy": "soft", "task": "c"}
    table = CompiledJoinTable(MODELS, 10**9, 60_000, 100, deps=deps)
    table.add(PredictionEvent(request_id="r", model="a", ts=5, probs=(0.25, 0.75)), 0)
    table.add(PredictionEvent(request_id="s", model="b", ts=6, text="t", confidence=0.5), 0)
    expected = [(rid, encode_state(table.pending_state(rid))) for rid in ("r", "s")]
    assert table.pending_json(["r", "s"]) == expected
    assert expected[0][1].endswith(b',"deps":' + encode_state(deps) + b"}")
