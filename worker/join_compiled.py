"""The live join of one partition number with its pending requests held in compiled code
(``native/src/join.rs``): a ``JoinTable`` for the live worker whose hot path runs no
Python per event (only each closed request's ``FinishedRequest`` constructor). Pure code,
as the table it stands in for.

``table_for`` gives it where it applies and the extension is installed: live (wall-clock
deadlines), without early decision, with input from one topic, at most
``MAX_MODELS`` models. Anything else gets the Python ``JoinTable``, which stays the
reference: tests/test_join_compiled.py runs the two side by side, operation by
operation, and requires the same outcomes, closed requests and state.

Beside ``JoinTable``'s methods it has ``add_run``, which the engine calls with a
partition's run of records and the compiled decoder's events: it adds them one after the
other in compiled code, and stops where Python has to look (a record with no event or
with headers, or an event not accepted), so that the engine's per-record code runs only
for those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from worker import native
from worker.config import Config
from worker.events import FinishedRequest, PredictionEvent
from worker.join import Decider, JoinTable, Outcome
from worker.join_pending import arrival_order
from worker.join_state import encode_state, export_state, pending_from_state
from worker.records import RawRecord

# The compiled table's models: its arrival code (a digit per member) fits 64 bits.
MAX_MODELS = 15
# The compiled table's outcome codes, by value; -1 (``LEFT``): a record Python decides.
OUTCOMES: tuple[Outcome, ...] = ("accepted", "duplicate", "late")
LEFT = -1


def table_for(
    config: Config,
    *,
    event_time: bool,
    decider: Decider | None,
    deps: Mapping[str, Any] | None,
) -> JoinTable:
    """A join table for ``config``'s models and ``[join]`` settings: the compiled one
    where it applies (see the module docstring), else the Python one."""
    models, j = config.model_names, config.join
    memory_ms, memory_count = j.fused_memory_effective_ms, j.fused_memory_count
    if (
        native.JoinCore is not None
        and not event_time
        and decider is None
        and len(config.kafka.input_topics) == 1
        and len(models) <= MAX_MODELS
    ):
        return CompiledJoinTable(models, j.timeout_ms, memory_ms, memory_count, deps=deps)
    return JoinTable(
        models,
        j.timeout_ms,
        memory_ms,
        memory_count,
        event_time=event_time,
        decider=decider,
        deps=deps,
    )


class CompiledJoinTable(JoinTable):
    """``JoinTable``'s interface over the compiled table (live, one source, no decider).

    A subclass so that it goes wherever a ``JoinTable`` does; it validates its arguments
    and keeps its settings through ``JoinTable.__init__``, and overrides every method that
    reads or changes pending requests, so none of the Python table's own structures is
    used."""

    def __init__(
        self,
        models: Sequence[str],
        timeout_ms: int,
        fused_memory_ms: int,
        fused_memory_count: int,
        *,
        deps: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(models, timeout_ms, fused_memory_ms, fused_memory_count, deps=deps)
        assert native.JoinCore is not None, "the compiled extension is not installed"
        self._core = native.JoinCore(
            list(self.models), timeout_ms, fused_memory_ms, fused_memory_count, FinishedRequest
        )

    def add(
        self, event: PredictionEvent, now_ms: int, source: str = "", offset: int = -1
    ) -> Outcome:
        code: int = self._core.add(event, now_ms, source, offset)
        return OUTCOMES[code]

    def add_run(
        self,
        events: list[PredictionEvent | None],
        records: Sequence[RawRecord],
        start: int,
        now_ms: int,
        source: str,
        touched: list[str] | None,
    ) -> tuple[int, int]:
        """Add the events of ``records[start:]`` (``events``: each record's, None where
        Python decodes it) at their offsets, appending each accepted one's request id to
        ``touched``; stop at a record Python must see. Returns its index and outcome code
        (an index of ``OUTCOMES`` for an event added and not accepted, ``LEFT`` for a
        record not added: no event, or headers), or ``(len(records), 0)``."""
        stop: tuple[int, int] = self._core.add_run(events, records, start, now_ms, source, touched)
        return stop

    def take_accepted(self) -> list[int]:
        """Per model position, how many events ``add_run`` accepted since the last call."""
        counts: list[int] = self._core.take_accepted()
        return counts

    def expire(self, now_ms: int) -> None:
        self._core.expire(now_ms)

    def close_all(self, now_ms: int) -> None:
        self._core.close_all(now_ms)

    def drain(self) -> list[FinishedRequest]:
        closed: list[FinishedRequest] = self._core.drain()
        return closed

    def take_spans(self) -> dict[str, list[tuple[int, int]]]:
        spans: dict[str, list[tuple[int, int]]] = self._core.take_spans()
        return spans

    def __len__(self) -> int:
        return len(self._core)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._core

    def pending_json(self, request_ids: Iterable[str]) -> list[tuple[str, bytes]]:
        # The core writes the JSON (byte for byte msgspec's), ``deps`` as encoded here;
        # a state holding a value it does not cover comes as None, built here.
        deps = None if self.deps is None else encode_state(self.deps)
        found: list[tuple[str, bytes | None]] = self._core.pending_json(request_ids, deps)
        return [
            (rid, encode_state(self.pending_state(rid)) if raw is None else raw)
            for rid, raw in found
        ]

    def next_deadline_ms(self) -> int | None:
        deadline: int | None = self._core.next_deadline_ms()
        return deadline

    def oldest_opened_ms(self) -> int | None:
        opened: int | None = self._core.oldest_opened_ms()
        return opened

    def oldest_offsets(self) -> dict[str, int]:
        oldest = self._core.oldest_offset()
        return {} if oldest is None else {oldest[0]: oldest[1]}

    def remember_fused(self, request_ids: Iterable[str], now_ms: int) -> int:
        remembered: int = self._core.remember_fused(request_ids, now_ms)
        return remembered

    def pending_state(self, request_id: str) -> dict[str, Any] | None:
        found = self._core.pending(request_id)
        if found is None:
            return None
        arrived, opened_ms, first_ts, deadline_ms = found
        return export_state(
            request_id, opened_ms, self.models, arrived, first_ts, deadline_ms, self.deps
        )

    def restore(self, state: dict[str, Any]) -> None:
        rid, p, first_ts, deadline_ms = pending_from_state(state, self._index, self.models)
        arrived = [(i, p[i]) for _, i in arrival_order(p.arrival, self.models)]
        self._core.restore(rid, arrived, p.opened_ms, first_ts, deadline_ms)

    @property
    def _offset_entries(self) -> int:
        """Offset marks held, stale ones included (a memory bound tests read)."""
        entries: int = self._core.entries()[2]
        return entries
