"""The engine step: raw input records in; fused results, dead letters, late records and
tallies out. Pure: no Kafka, no clock, no I/O.

``run`` (live topics), ``replay``, ``fuse`` and ``backtest`` all drive ``Engine.step``
(the live loop through ``step_runs``, the same step over ``getmany``'s runs), so a
backtest computes what production computes. The engine owns one ``JoinTable`` per
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

from collections.abc import Iterable, Sequence
from typing import Any

from worker.config import Config
from worker.decode import Decoder, check_key
from worker.engine_labels import BatchFuser as BatchFuser
from worker.engine_labels import LearningFuser, fuse_learning
from worker.engine_outputs import Outputs
from worker.errors import InvalidEvent
from worker.events import FinishedRequest, PredictionEvent
from worker.fusion import Fuser
from worker.fusion.early import EarlyDecider
from worker.fusion.feedback import JOINED, LabelEvent
from worker.fusion.result import result_json
from worker.join import JoinTable
from worker.join_compiled import LEFT, OUTCOMES, CompiledJoinTable, table_for
from worker.labels import LabelDecoder, check_label_key
from worker.learning import Learning
from worker.murmur2 import partition_for
from worker.records import Headers as Headers
from worker.records import InRecord as InRecord
from worker.records import OutRecord as OutRecord
from worker.records import RawRecord, Run, runs_of, with_place
from worker.records import Record as Record
from worker.records import Step as Step
from worker.records import dead_letter as dead_letter
from worker.state_deps import describe
from worker.tracecontext import read_traceparent

# The requests a step closed, each with its partition number, in closing order.
Closed = list[tuple[int, FinishedRequest]]


class Engine:
    """Decode, join and fuse; see the module docstring.

    Parameters
    ----------
    config : the validated configuration.
    fuser : fuses a batch of finished requests.
    event_time : the event-time clock (offline) instead of the caller's ``now_ms``.
    encode : build the ``OutRecord``s of ``Step.outputs`` (the live worker publishes
        them; offline drivers only read ``Step.results``).
    results : build the result dicts of ``Step.results``; False (the live worker), with
        ``encode``: where ``Fuser.fuse_bytes`` covers a batch, only its records and counts.
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
        results: bool = True,
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
        # Only the one Fuser has the compiled writer; the learning one builds dicts.
        self._bytes_fuser = (
            fuser
            if encode and not results and learning is None and isinstance(fuser, Fuser)
            else None
        )
        self._check_keys = check_keys
        self._track = track_touched
        self._partitions = partitions
        self.tables: dict[int, JoinTable] = {}
        self._stream_ms: dict[int, int] = {}
        # Dead letters, late and fused records to output records (worker/engine_outputs.py).
        self._outputs = Outputs(config, encode, track_touched)
        self._dead = self._outputs.dead
        self._not_joined = self._outputs.not_joined
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
        table = self.tables[partition] = table_for(
            self.config, event_time=self.event_time, decider=self._decider, deps=self._deps
        )
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
        if not self.event_time:
            return self.step_runs(runs_of(records), now_ms)
        out = Step()
        finished: Closed = []
        self._join_event_time(records, out, finished)
        self._fuse(finished, out)
        return self.learned(out)

    def step_runs(self, runs: Iterable[Run], now_ms: int) -> Step:
        """Live ``step`` of records that come in runs of one topic partition each, as
        ``getmany`` returns them: a record then needs no topic or partition of its own."""
        if self.event_time:
            raise ValueError("step_runs is the live step; event time takes step(records)")
        out = Step()
        self._join_live(runs, now_ms, out)
        finished: Closed = []
        for p, table in self.tables.items():
            table.expire(now_ms)
            finished += [(p, f) for f in table.drain()]
            for topic, taken in table.take_spans().items():
                out.spans[topic, p] = taken
        self._fuse(finished, out)
        return self.learned(out)

    def finish(self) -> Step:
        """End of input (event time): close every pending request and fuse it."""
        out = Step()
        finished: Closed = []
        for p, table in sorted(self.tables.items()):
            table.close_all(self._stream_ms.get(p, 0))
            finished += [(p, f) for f in table.drain()]
        self._fuse(finished, out)
        return self.learned(out)

    def _join_live(self, runs: Iterable[Run], now_ms: int, out: Step) -> None:
        decode_many = self._decoder.decode_many
        tables = self.tables
        track = self._track
        accepted: dict[str, int] = {}
        positions = out.positions
        n = 0
        for (topic, partition), records in runs:
            table = tables.get(partition)
            if table is None or not records:
                continue  # not (or no longer) ours
            n_run = len(records)
            n += n_run
            positions[topic, partition] = records[-1].offset + 1
            if topic == self._labels_topic:
                for r in records:
                    self._label(with_place(topic, partition, r), partition, now_ms, out)
                continue
            # The compiled decoder's events (None where Python decides), or None without it.
            fast = decode_many(records, self._check_keys)
            touched = out.touched.setdefault(partition, []) if track else None  # per run
            if fast is not None and isinstance(table, CompiledJoinTable):
                # Added in compiled code but for the records it stops at (see add_run).
                i = 0
                while (stop := table.add_run(fast, records, i, now_ms, topic, touched))[0] < n_run:
                    i, outcome = stop
                    r, ev = records[i], fast[i]
                    if outcome == LEFT:
                        self._join_record(
                            table, topic, partition, r, ev, now_ms, accepted, touched, out
                        )
                    else:
                        assert ev is not None  # the table added it
                        self._not_joined(
                            with_place(topic, partition, r), ev.model, OUTCOMES[outcome], out
                        )
                    i += 1
                for model, count in zip(table.models, table.take_accepted(), strict=True):
                    accepted[model] = accepted.get(model, 0) + count
                continue
            for i, r in enumerate(records):
                ev = None if fast is None else fast[i]
                self._join_record(table, topic, partition, r, ev, now_ms, accepted, touched, out)
        out.records += n
        for model, count in accepted.items():
            out.accepted[model] += count

    def _join_record(
        self,
        table: JoinTable,
        topic: str,
        partition: int,
        r: RawRecord,
        ev: PredictionEvent | None,
        now_ms: int,
        accepted: dict[str, int],
        touched: list[str] | None,
        out: Step,
    ) -> None:
        """One record of a live run, added to ``table`` (``ev``: the compiled decoder's
        event, None: decoded here); counted in ``accepted`` by model."""
        ev = self._event(r, ev, out, (topic, partition))
        if ev is None:
            return
        outcome = table.add(ev, now_ms, topic, r.offset)
        if outcome == "accepted":
            accepted[ev.model] = accepted.get(ev.model, 0) + 1
            if touched is not None:
                touched.append(ev.request_id)
        else:
            self._not_joined(with_place(topic, partition, r), ev.model, outcome, out)

    def _join_event_time(self, records: Sequence[Record], out: Step, finished: Closed) -> None:
        for r in records:
            out.records += 1
            if r.topic == self._labels_topic:
                self._label_event_time(r, out, finished)
                continue
            ev = self._event(r, None, out)
            if ev is None:
                continue
            p, table, now = self._advance(r.partition, ev.request_id, ev.ts)
            outcome = table.add(ev, now)
            table.expire(now)
            if outcome == "accepted":
                out.accepted[ev.model] += 1
            else:
                self._not_joined(r, ev.model, outcome, out)
            finished += [(p, f) for f in table.drain()]

    def _event(
        self, r: Any, ev: PredictionEvent | None, out: Step, place: tuple[str, int] | None = None
    ) -> PredictionEvent | None:
        """The event of record ``r`` (``ev`` where the compiled decoder gave it), traced
        from its headers; None when invalid (a dead letter; ``place``: the topic and
        partition of a record without its own)."""
        if ev is None:
            try:
                ev = self._decoder.decode(r.value, r.timestamp)
                if self._check_keys:
                    check_key(r.key, ev)
            except InvalidEvent as exc:
                self._dead(r if place is None else with_place(*place, r), exc, out)
                return None
        if r.headers:
            traceparent, bad = read_traceparent(r.headers)
            if traceparent is not None:
                ev = ev.traced(traceparent)
            out.bad_traceparents += bad
        return ev

    def _advance(self, partition: int, request_id: str, ts: int) -> tuple[int, JoinTable, int]:
        """Event time: the partition an event or label of ``request_id`` belongs to (its
        record's, or the key's under the configured partition count), its table, and that
        partition's stream clock moved to ``ts``, with what expired by then closed."""
        n = self._partitions
        p = partition if n is None else partition_for(request_id.encode(), n)
        table = self.tables.get(p)
        if table is None:
            table = self.open(p)
        now = max(self._stream_ms.get(p, ts), ts)
        self._stream_ms[p] = now
        table.expire(now)
        return p, table, now

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

    def _label(
        self, r: Record, partition: int, now_ms: int, out: Step, ev: LabelEvent | None = None
    ) -> None:
        assert self.learning is not None
        ev = ev if ev is not None else self._decode_label(r, out)
        if ev is None:
            return
        outcome = self.learning.label(partition, ev, now_ms)
        out.feedback[outcome] += 1
        if outcome == JOINED and self.learning.adaptive:
            weights = self.learning.weights(partition)
            if weights is not None:
                out.weights[partition] = weights

    def _label_event_time(self, r: Record, out: Step, finished: Closed) -> None:
        ev = self._decode_label(r, out)
        if ev is not None:
            p, table, now = self._advance(r.partition, ev.request_id, ev.ts)
            finished += [(p, f) for f in table.drain()]
            # What closed before the label is fused with the weights it would have had.
            self._fuse(finished, out)
            finished.clear()
            self._label(r, p, now, out, ev)

    def _fuse(self, finished: Closed, out: Step) -> None:
        if not finished:
            return
        requests = [f for _, f in finished]
        bytes_fuser = self._bytes_fuser
        written = None if bytes_fuser is None else bytes_fuser.fuse_bytes(requests)
        if written is not None:  # the compiled writer's bytes, no dicts
            values, counted = written
            out.counted.append(counted)
        else:
            learning = self._learning_fuser is not None
            results = self._fuse_learning(finished) if learning else self._fuser.fuse(requests)
            # Appended: on event time a step fuses once per label it reads.
            out.results += results
            out.uncounted += requests
            values = [result_json(r) for r in results] if self._outputs.encode else []
        out.finished += requests
        out.result_partitions += [p for p, _ in finished]
        traced = written is None or written[1].traced  # else no member has a traceparent
        self._outputs.fused(finished, values, traced, out)

    def _fuse_learning(self, finished: Closed) -> list[dict[str, Any]]:
        fuser, learning = self._learning_fuser, self.learning
        assert fuser is not None
        assert learning is not None
        return fuse_learning(fuser, learning, self._start_weights, finished)

    def learned(self, out: Step) -> Step:
        """``out`` with the quality windows read, if a label joined in it."""
        if self.learning is not None and out.feedback[JOINED]:
            out.quality = self.learning.quality()
        return out
