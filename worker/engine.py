"""The engine step: raw input records in; fused results, dead letters, late records and
tallies out. Pure: no Kafka, no clock, no I/O.

``run`` (live topics), ``replay``, ``fuse`` and ``backtest`` all drive ``Engine.step``,
so a backtest computes what production computes. The engine owns one ``JoinTable`` per
input partition number; whoever owns the engine (the worker loop, or the offline driver)
owns that state.

Two clocks (DESIGN.md, "Join semantics"):

- live (``event_time=False``): ``now_ms`` is the caller's wall clock; a step joins every
  record at ``now_ms``, then closes what is due at ``now_ms``. Only partitions the caller
  opened (``open``) take records; records of any other partition are ignored (the
  caller no longer owns them).
- event time (``event_time=True``): ``now_ms`` is ignored. Each partition number's
  stream time is the largest event ts seen on it; before and after an event joins,
  every request of its partition whose deadline is <= the stream time closes.
  ``finish`` closes everything pending (end of input), partitions in ascending order.
  The output depends only on the records' content and order, never on how they were
  split into steps.

Within a step the outputs of each input partition number come in input order: a dead
letter or late record where its record was, then the step's fused results, in closing
order.

Trace context: a valid ``traceparent`` header of an input record is kept on its event;
a fused record continues the first member's trace in its own ``traceparent`` header
(``worker.tracecontext``); an unusable header is counted (``Step.bad_traceparents``) and
otherwise ignored.

Labels (``learning``, worker/learning.py): records of the labels topic are label events
(worker/labels.py), joined with the feedback memory of their partition number. Live, a
step's labels are applied before the step's fusion. On event time a label is an event of
the stream at its ``ts``: what closed before it is fused first (with the weights of that
moment), then the label's partition's stream time moves to its ts, then it is joined; so
the output still depends only on the records' order, never on the step size. Each fused
request is remembered (its calibrated member predictions and fused output) until its
label comes; with adaptive weights each partition number fuses with its own weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from worker.config import Config
from worker.decode import Decoder, check_key
from worker.errors import InvalidEvent
from worker.events import FinishedRequest
from worker.fusion import Fuser
from worker.fusion.batch import Batch, FloatArray
from worker.fusion.early import EarlyDecider
from worker.fusion.feedback import JOINED, LabelEvent
from worker.fusion.quality import Quality
from worker.fusion.result import Fused
from worker.join import JoinTable
from worker.labels import LabelDecoder, check_label_key
from worker.learning import Learning
from worker.murmur2 import partition_for
from worker.state_deps import describe
from worker.tracecontext import HEADER as TRACEPARENT
from worker.tracecontext import fused_traceparent, read_traceparent

Headers = list[tuple[str, bytes]]


class Record(Protocol):
    """What the engine reads of an input record. aiokafka's ``ConsumerRecord`` has these
    attributes (so the loop hands its records over as they are); offline sources use
    ``InRecord``. ``timestamp`` is the record timestamp in ms (None or < 0: none)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class InRecord:
    """One input record from a source that is not a Kafka consumer (a file, a replay).
    ``timestamp`` is the record timestamp in ms, named as aiokafka names it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(slots=True)
class OutRecord:
    """One record to publish: a fused result, a dead letter or a late event."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


@dataclass(slots=True)
class Step:
    """What one engine step produced.

    ``outputs``: per input partition number, the records to publish, in order (empty
    unless the engine encodes records). ``results``: the fused result dicts, in closing
    order, with ``finished`` (the same requests) and ``result_partitions`` (the partition
    number of each). ``fused_records``: the ``OutRecord`` of each fused result, in the
    same order (empty unless the engine encodes records). ``positions``: per (topic,
    partition) the offset after the last record the step consumed. ``touched``: per
    partition number, the request ids whose pending state changed (only when the engine
    tracks them).
    """

    outputs: dict[int, list[OutRecord]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    finished: list[FinishedRequest] = field(default_factory=list)
    result_partitions: list[int] = field(default_factory=list)
    fused_records: list[OutRecord] = field(default_factory=list)
    invalid: list[tuple[Record, InvalidEvent]] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    touched: dict[int, list[str]] = field(default_factory=dict)
    records: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    other: Counter[tuple[str, str]] = field(default_factory=Counter)  # (model, outcome)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    late: int = 0  # late records forwarded to the late topic
    bad_traceparents: int = 0  # valid events whose traceparent header was unusable
    # Labels (with ``learning``): label events by outcome (worker.fusion.feedback.OUTCOMES);
    # the quality windows after the step's labels (None when none joined); the weights of
    # each partition number whose weights moved in the step (adaptive), (m,) each.
    feedback: Counter[str] = field(default_factory=Counter)
    quality: dict[str, Quality] | None = None
    weights: dict[int, FloatArray] = field(default_factory=dict)


class BatchFuser(Protocol):
    """What the engine needs of a fuser: ``worker.fusion.Fuser`` or any wrapper of it."""

    def fuse(self, finished: list[FinishedRequest], /) -> list[dict[str, Any]]: ...


class LearningFuser(BatchFuser, Protocol):
    """What the engine needs of a fuser to learn from labels (``worker.fusion.Fuser``)."""

    weights: FloatArray

    def fuse_arrays(
        self, finished: list[FinishedRequest], /
    ) -> tuple[list[dict[str, Any]], Batch, Fused]: ...

    def set_weights(self, weights: FloatArray, /) -> None: ...


class Engine:
    """Decode, join and fuse; see the module docstring.

    Parameters
    ----------
    config : the validated configuration.
    fuser : fuses a batch of finished requests.
    event_time : the event-time clock (offline) instead of the caller's ``now_ms``.
    encode : build the ``OutRecord``s of ``Step.outputs`` (the live worker publishes
        them; offline drivers only read ``Step.results``).
    check_keys : dead-letter a record whose key is not its request_id (``key_mismatch``).
    track_touched : report in ``Step.touched`` which requests changed (exactly-once
        writes their net change to the changelog).
    partitions : place each valid event on ``murmur2(request_id) % partitions`` instead
        of its record's partition (``fuse`` of a file, as Kafka's partitioner would).
    learning : learn from the records of ``labels_topic`` (the fuser must then be a
        ``LearningFuser``).
    labels_topic : the topic whose records are label events (default: [feedback] topic).
    """

    def __init__(
        self,
        config: Config,
        fuser: BatchFuser,
        *,
        event_time: bool = False,
        encode: bool = True,
        check_keys: bool = False,
        track_touched: bool = False,
        partitions: int | None = None,
        learning: Learning | None = None,
        labels_topic: str | None = None,
    ) -> None:
        self.config = config
        self._decoder = Decoder(config)
        self._fuser = fuser
        self.event_time = event_time
        self._encode = encode
        self._check_keys = check_keys
        self._track = track_touched
        self._partitions = partitions
        self.tables: dict[int, JoinTable] = {}
        self._stream_ms: dict[int, int] = {}
        k = config.kafka
        self._dlq_topic = k.dlq_topic
        self._late_topic = k.late_topic
        self._output_topic = k.output_topic
        # Early decision needs the one Fuser whose label it predicts; a replay or
        # backtest fusing several strategies at once waits for every member.
        j = config.join
        self._decider = (
            EarlyDecider.from_fuser(fuser, j.min_models, config.fusion.prob_tolerance)
            if j.early_decision and isinstance(fuser, Fuser)
            else None
        )
        self._deps = describe(config)
        self.learning = learning
        self._learning_fuser: LearningFuser | None = None
        self._labels_topic: str | None = None
        if learning is not None:
            learning_fuser: LearningFuser = fuser  # type: ignore[assignment]
            self._learning_fuser = learning_fuser
            # Until a partition's labels move its weights it fuses with the configured ones.
            self._start_weights = learning_fuser.weights.copy()
            self._labels_topic = labels_topic or config.feedback.topic or None
            self._label_decoder = LabelDecoder(config)

    # -- partition state ----------------------------------------------------------------

    def open(self, partition: int) -> JoinTable:
        """An empty table for ``partition`` (replacing any), which then takes records."""
        j = self.config.join
        table = JoinTable(
            self.config.model_names,
            j.timeout_ms,
            j.fused_memory_effective_ms,
            j.fused_memory_count,
            event_time=self.event_time,
            decider=self._decider,
            deps=self._deps,
        )
        self.tables[partition] = table
        return table

    def close(self, partition: int) -> None:
        """Forget ``partition``'s pending requests (whoever owns it next reads them again)."""
        self.tables.pop(partition, None)
        self._stream_ms.pop(partition, None)
        if self.learning is not None:
            self.learning.close(partition)

    @property
    def pending(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def next_deadline_ms(self) -> int | None:
        deadlines = [d for t in self.tables.values() if (d := t.next_deadline_ms()) is not None]
        return min(deadlines) if deadlines else None

    def oldest_opened_ms(self) -> int | None:
        opened = [o for t in self.tables.values() if (o := t.oldest_opened_ms()) is not None]
        return min(opened) if opened else None

    # -- the step -------------------------------------------------------------------------

    def step(self, records: Sequence[Record], now_ms: int = 0) -> Step:
        """Join ``records`` (in order), close what is due, fuse everything that closed."""
        out = Step()
        finished: list[tuple[int, FinishedRequest]] = []
        if self.event_time:
            self._join_event_time(records, out, finished)
        else:
            self._join_live(records, now_ms, out)
            for p, table in self.tables.items():
                table.expire(now_ms)
                finished += [(p, f) for f in table.drain()]
        self._fuse(finished, out)
        return self.learned(out)

    def finish(self) -> Step:
        """End of input (event time): close every pending request and fuse it."""
        out = Step()
        finished: list[tuple[int, FinishedRequest]] = []
        for p in sorted(self.tables):
            table = self.tables[p]
            table.close_all(self._stream_ms.get(p, 0))
            finished += [(p, f) for f in table.drain()]
        self._fuse(finished, out)
        return self.learned(out)

    def _join_live(self, records: Sequence[Record], now_ms: int, out: Step) -> None:
        decode = self._decoder.decode
        check = check_key if self._check_keys else None
        tables = self.tables
        track = self._track
        accepted: dict[str, int] = {}
        positions = out.positions
        # Records come grouped by topic partition (a fetch is): look the table up and
        # note the position once per group, not once per record.
        table: JoinTable | None = None
        tp: tuple[str, int] | None = None
        last = -1
        n = 0
        bad_traceparents = 0
        for r in records:
            topic, partition, offset = r.topic, r.partition, r.offset
            if tp is None or tp[1] != partition or tp[0] != topic:
                if tp is not None and table is not None:
                    positions[tp] = last + 1
                tp = (topic, partition)
                table = tables.get(partition)
            if table is None:
                continue  # not (or no longer) ours
            n += 1
            last = offset
            if topic == self._labels_topic:
                self._label(r, partition, now_ms, out)
                continue
            try:
                ev = decode(r.value, r.timestamp)
                if check is not None:
                    check(r.key, ev)
            except InvalidEvent as exc:
                self._dead(r, exc, out)
                continue
            if r.headers:
                ev.traceparent, bad = read_traceparent(r.headers)
                bad_traceparents += bad
            outcome = table.add(ev, now_ms, topic, offset)
            if outcome == "accepted":
                accepted[ev.model] = accepted.get(ev.model, 0) + 1
                if track:
                    out.touched.setdefault(partition, []).append(ev.request_id)
            else:
                self._not_joined(r, ev.model, outcome, out)
        if tp is not None and table is not None:
            positions[tp] = last + 1
        out.records += n
        out.accepted.update(accepted)
        out.bad_traceparents += bad_traceparents

    def _join_event_time(
        self,
        records: Sequence[Record],
        out: Step,
        finished: list[tuple[int, FinishedRequest]],
    ) -> None:
        decode = self._decoder.decode
        n = self._partitions
        for r in records:
            out.records += 1
            if r.topic == self._labels_topic:
                self._label_event_time(r, out, finished)
                continue
            try:
                ev = decode(r.value, r.timestamp)
                if self._check_keys:
                    check_key(r.key, ev)
            except InvalidEvent as exc:
                self._dead(r, exc, out)
                continue
            if r.headers:
                ev.traceparent, bad = read_traceparent(r.headers)
                out.bad_traceparents += bad
            p = r.partition if n is None else partition_for(ev.request_id.encode(), n)
            table = self.tables.get(p)
            if table is None:
                table = self.open(p)
            now = max(self._stream_ms.get(p, ev.ts), ev.ts)
            self._stream_ms[p] = now
            table.expire(now)
            outcome = table.add(ev, now)
            table.expire(now)
            if outcome == "accepted":
                out.accepted[ev.model] += 1
            else:
                self._not_joined(r, ev.model, outcome, out)
            finished += [(p, f) for f in table.drain()]

    # -- labels ---------------------------------------------------------------------------

    def _decode_label(self, r: Record, out: Step) -> LabelEvent | None:
        try:
            ev = self._label_decoder.decode(r.value, r.timestamp)
            if self._check_keys:
                check_label_key(r.key, ev)
        except InvalidEvent as exc:
            self._dead(r, exc, out)
            return None
        return ev

    def _label(self, r: Record, partition: int, now_ms: int, out: Step) -> None:
        assert self.learning is not None
        ev = self._decode_label(r, out)
        if ev is None:
            return
        outcome = self.learning.label(partition, ev, now_ms)
        out.feedback[outcome] += 1
        if outcome == JOINED and self.learning.adaptive:
            weights = self.learning.weights(partition)
            if weights is not None:
                out.weights[partition] = weights

    def _label_event_time(
        self, r: Record, out: Step, finished: list[tuple[int, FinishedRequest]]
    ) -> None:
        ev = self._decode_label(r, out)
        if ev is None:
            return
        n = self._partitions
        p = r.partition if n is None else partition_for(ev.request_id.encode(), n)
        table = self.tables.get(p)
        if table is None:
            table = self.open(p)
        now = max(self._stream_ms.get(p, ev.ts), ev.ts)
        self._stream_ms[p] = now
        table.expire(now)
        finished += [(p, f) for f in table.drain()]
        # What closed before the label is fused with the weights it would have had.
        self._fuse(finished, out)
        finished.clear()
        self._label(r, p, now, out)

    def _dead(self, r: Record, exc: InvalidEvent, out: Step) -> None:
        out.invalid.append((r, exc))
        out.dead_letters[exc.reason] += 1
        if self._encode:
            out.outputs.setdefault(r.partition, []).append(dead_letter(self._dlq_topic, r, exc))

    def _not_joined(self, r: Record, model: str, outcome: str, out: Step) -> None:
        out.other[(model, outcome)] += 1
        if outcome == "late" and self._late_topic:
            out.late += 1
            if self._encode:
                out.outputs.setdefault(r.partition, []).append(
                    OutRecord(self._late_topic, r.key, r.value, list(r.headers))
                )

    def _fuse(self, finished: list[tuple[int, FinishedRequest]], out: Step) -> None:
        if not finished:
            return
        requests = [f for _, f in finished]
        if self._learning_fuser is None:
            results = self._fuser.fuse(requests)
        else:
            results = self._fuse_learning(finished)
        # Appended: on event time a step fuses once per label it reads.
        out.results += results
        out.finished += requests
        out.result_partitions += [p for p, _ in finished]
        if self._encode:
            topic = self._output_topic
            dumps = orjson.dumps
            outputs = out.outputs
            fused_records = out.fused_records
            for (p, f), result in zip(finished, results, strict=True):
                header = fused_traceparent(f.request_id, f.members.values())
                rec = OutRecord(
                    topic,
                    f.request_id.encode(),
                    dumps(result),
                    None if header is None else [(TRACEPARENT, header)],
                )
                outputs.setdefault(p, []).append(rec)
                fused_records.append(rec)
        if self._track:
            for p, f in finished:
                out.touched.setdefault(p, []).append(f.request_id)

    def _fuse_learning(self, finished: list[tuple[int, FinishedRequest]]) -> list[dict[str, Any]]:
        """Fuse per partition number (each with its own weights when adaptive), remember
        every fused request for its label; the results in the order of ``finished``."""
        fuser, learning = self._learning_fuser, self.learning
        assert fuser is not None
        assert learning is not None
        rows: dict[int, list[int]] = {}
        for i, (p, _) in enumerate(finished):
            rows.setdefault(p, []).append(i)
        results: list[dict[str, Any]] = [{} for _ in finished]
        for p, indices in rows.items():
            group = [finished[i][1] for i in indices]
            weights = learning.weights(p)
            if learning.adaptive:
                fuser.set_weights(self._start_weights if weights is None else weights)
            fused_results, batch, fused = fuser.fuse_arrays(group)
            for i, result in zip(indices, fused_results, strict=True):
                results[i] = result
            now = max(f.fused_ts for f in group)
            learning.remember(
                p, [f.request_id for f in group], [f.fused_ts for f in group], batch, fused, now
            )
        return results

    def learned(self, out: Step) -> Step:
        """``out`` with the quality windows read, if a label joined in it."""
        if self.learning is not None and out.feedback[JOINED]:
            out.quality = self.learning.quality()
        return out


def dead_letter(topic: str, record: Record, exc: InvalidEvent) -> OutRecord:
    """The original bytes and headers, unchanged, with the reason and the source
    coordinates added (schemas/dlq.v1.json)."""
    headers: Headers = [
        *record.headers,
        ("error", exc.reason.encode()),
        ("error_detail", exc.detail[:1000].encode("utf-8", "replace")),
        ("source_topic", record.topic.encode()),
        ("source_partition", str(record.partition).encode()),
        ("source_offset", str(record.offset).encode()),
    ]
    value = record.value if record.value is not None else b""
    return OutRecord(topic, record.key, value, headers)
