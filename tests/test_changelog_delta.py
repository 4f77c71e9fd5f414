"""The changelog's net change of an interval (``worker.runtime.changelog.net_change``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.events import PredictionEvent
from worker.join import JoinTable
from worker.join_compiled import CompiledJoinTable
from worker.join_state import encode_state
from worker.runtime.changelog import net_change

MODELS = ("a", "b", "c")
RIDS = [f"r{i}" for i in range(8)]
TABLES = [JoinTable] + ([CompiledJoinTable] if native.JoinCore is not None else [])


def naive(table: JoinTable, dirty: set[str], logged: set[str]) -> list[Any]:
    """The definition, one request at a time: a pending request's state, else a
    tombstone where the changelog holds it."""
    out: list[tuple[bytes, bytes | None]] = []
    for rid in dirty:
        state = table.pending_state(rid)
        if state is not None:
            out.append((rid.encode(), encode_state(state)))
        elif rid in logged:
            out.append((rid.encode(), None))
    return out


@pytest.mark.parametrize("table_type", TABLES)
@settings(max_examples=200, deadline=None)
@given(
    adds=st.lists(st.tuples(st.sampled_from(RIDS), st.sampled_from(MODELS)), max_size=30),
    dirty=st.sets(st.sampled_from([*RIDS, "gone", "é"])),
    logged=st.sets(st.sampled_from([*RIDS, "gone", "é"])),
)
def test_the_net_change_is_each_touched_requests_state_or_tombstone(
    table_type: type[JoinTable],
    adds: list[tuple[str, str]],
    dirty: set[str],
    logged: set[str],
) -> None:
    """Whatever is pending, closed (complete) or unknown, the records are those of the
    per-request definition: the state of each touched pending request, a tombstone for
    each touched one the changelog holds and the table does not, nothing else."""
    table = table_type(MODELS, 1000, 60_000, 100)
    for ts, (rid, model) in enumerate(adds):
        table.add(PredictionEvent(request_id=rid, model=model, ts=ts, probs=(0.5, 0.5)), ts)
    table.drain()
    assert sorted(net_change(table, dirty, logged), key=repr) == sorted(
        naive(table, dirty, logged), key=repr
    )
