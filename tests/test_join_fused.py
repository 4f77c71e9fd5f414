"""The join's memory of fused ids, compiled (``native/src/fused.rs``) and in Python
(``worker/join_fused.py``): the same answers to every sequence of calls. The join's own
tests run on the compiled one (``fused_ids`` picks it where it is installed)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from worker import native
from worker.join_fused import FusedIds, fused_ids

ids = st.sampled_from(["a", "b", "c", "d", "e", "f", "\ud800", "\udc00x", "é"])
times = st.integers(0, 40)
calls = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids, times),
        st.tuples(st.just("add_all"), st.lists(ids, max_size=5), times, st.sets(ids, max_size=2)),
        st.tuples(st.just("forget"), st.one_of(st.none(), times)),
        st.tuples(st.just("late"), ids, times),
    ),
    max_size=60,
)


def _compiled(limit: int) -> Any:
    assert native.FusedIds is not None, "build native/ (make .venv) or unset FUSION_NATIVE=0"
    return native.FusedIds(limit)


def _answers(memory: Any, sequence: list[tuple[Any, ...]]) -> list[object]:
    """What each call returns, and how many ids are held after it."""
    out: list[object] = []
    for name, *args in sequence:
        out.append((getattr(memory, name)(*args), len(memory)))
    return out


@settings(max_examples=400)
@given(limit=st.integers(0, 5), sequence=calls)
def test_the_compiled_memory_answers_as_the_python_one(
    limit: int, sequence: list[tuple[Any, ...]]
) -> None:
    """Adds (one by one and in bulk, with ids to skip), forgets by time and by count, and
    late checks, ids with lone surrogates among them: the same answers and sizes."""
    assert _answers(_compiled(limit), sequence) == _answers(FusedIds(limit), sequence)


def test_the_join_uses_the_compiled_memory_where_it_is_installed() -> None:
    """``fused_ids`` gives the compiled memory when the extension is there."""
    assert type(fused_ids(10)) is native.FusedIds


def test_an_id_added_again_outlives_its_first_entry() -> None:
    """An id remembered again stays until its new expiry, though its old entry comes
    first out of the order."""
    memory = _compiled(10)
    memory.add("r", 5)
    memory.add("r", 20)
    memory.forget(5)
    assert memory.late("r", 6)
    assert len(memory) == 1
    assert not memory.late("r", 20)
