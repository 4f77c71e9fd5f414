"""`fusion-worker replay`: fuse a range of the input topics again, on event time.

The range is read by a consumer that joins no group and commits nothing (isolation
read_committed), between positions fixed before reading, so a replay always ends.
Positions (``--from`` inclusive, ``--to`` exclusive):

    earliest | latest            the log start / the log end as the replay starts
    offset:N                     offset N in every partition (clamped to the log)
    2024-05-01T12:00:00Z         the first record whose record timestamp is at or
                                 after that instant (ISO 8601; no zone means UTC)

Partition numbers are replayed one after the other (only one partition number's records
are held in memory); the records of several input topics of one partition number are
merged by (record timestamp, topic index, offset), each topic keeping its offset order.
They go through the offline engine (worker.offline, the one `fuse` uses), so the same
range always gives byte-identical output, and a topic filled from a file in file order
gives the same lines as `fuse --partitions N` on that file, as a set (`fuse` interleaves
partitions in file order; replay writes partition after partition).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.config import Config
from worker.engine import InRecord
from worker.errors import ConfigError, FusionError, KafkaSetupError
from worker.events import FinishedRequest
from worker.fusion import Fuser, registry
from worker.offline import BatchFuser, fuse_records, labels_by_partition, read_labels
from worker.runtime.connect import admin_client, client_options, producer_options
from worker.runtime.topics import partition_counts

log = logging.getLogger(__name__)

# (partition, value, record timestamp in ms): what the offline engine reads.
Record = tuple[int, bytes, int | None]
# Wait for the output topic's acknowledgements every this many results (bounded memory).
PUBLISH_CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Position:
    """One end of a range: ``kind`` is earliest, latest, offset or time (ms)."""

    kind: str
    value: int = 0

    @classmethod
    def parse(cls, text: str, name: str = "--from") -> Position:
        """Parse ``earliest``, ``latest``, ``offset:N`` or an ISO 8601 timestamp."""
        t = text.strip()
        if t in ("earliest", "latest"):
            return cls(t)
        if t.startswith("offset:"):
            digits = t[len("offset:") :]
            if not digits.isdigit():
                raise ConfigError(name, text, "offset:N needs an integer N >= 0")
            return cls("offset", int(digits))
        try:
            when = datetime.fromisoformat(t)
        except ValueError:
            raise ConfigError(
                name, text, "expected earliest, latest, offset:N or an ISO 8601 timestamp"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls("time", int(when.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class TopicRange:
    """``TOPIC[,TOPIC...]@FROM..TO``: topics (none: the configured input topics) and a
    range; the syntax `backtest` accepts for predictions and labels kept in Kafka."""

    topics: tuple[str, ...]
    start: Position
    end: Position

    @classmethod
    def parse(cls, text: str, name: str) -> TopicRange | None:
        """A TopicRange, or None when ``text`` has no ``@`` (then it is a file path)."""
        if "@" not in text:
            return None
        topics, _, span = text.partition("@")
        start, sep, end = span.partition("..")
        if not sep:
            raise ConfigError(name, text, "expected TOPIC@FROM..TO, e.g. preds@earliest..latest")
        names = tuple(t for t in topics.split(",") if t)
        return cls(names, Position.parse(start, name), Position.parse(end, name))


class Progress:
    """A one-line progress bar on stderr: done of total, rate and time left.

    Drawn only when enabled (by default: when stderr is a terminal), at most five times
    a second, so a redirected stderr stays clean and a fast replay is not slowed.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled and time.monotonic() - self._last >= 0.2:
            self._draw()

    def close(self) -> None:
        if self.enabled:
            # Markers and aborted records take offsets but are never read: end at 100 %.
            self.done = self.total
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        now = time.monotonic()
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        share = self.done / self.total if self.total else 1.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "-:--:--"
        filled = int(24 * min(share, 1.0))
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (24 - filled)}] {self.done:,}/{self.total:,}"
            f" {share:6.1%} {rate:,.0f} records/s, {eta} left  "
        )
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class MultiFuser:
    """One Fuser per strategy over the same finished requests: the join runs once and
    every strategy sees the same batches. Results come request by request, the
    strategies of one request in the order given (their ``strategy`` field differs)."""

    def __init__(self, fusers: Sequence[Fuser]) -> None:
        self.fusers = list(fusers)

    def fuse(self, finished: list[FinishedRequest]) -> list[dict[str, Any]]:
        per_strategy = [f.fuse(finished) for f in self.fusers]
        return [r for group in zip(*per_strategy, strict=True) for r in group]


def make_fuser(config: Config, strategies: Sequence[str] | None) -> Fuser | MultiFuser:
    """The configured strategy's Fuser, or a MultiFuser for several (names checked)."""
    names = list(strategies) if strategies else [config.fusion.strategy]
    task = registry.task_of(config.fusion.labels, config.fusion.task)
    for name in names:
        registry.lookup(name, task, key="--strategy")
    if len(set(names)) != len(names):
        raise ConfigError("--strategy", ",".join(names), "lists a strategy twice")
    if len(names) == 1:
        return Fuser(config, strategy=names[0])
    return MultiFuser([Fuser(config, strategy=name) for name in names])


# -- reading a range ---------------------------------------------------------------


class RangeReader:
    """The records of ``topics`` from ``start`` to ``end``, one partition number at a
    time: ``async with RangeReader(...) as r: async for records in r.partitions(): ...``.
    ``total`` is the number of offsets in the range (an upper bound of the records)."""

    def __init__(
        self,
        config: Config,
        topics: Sequence[str],
        start: Position,
        end: Position,
        co_partitioned: bool = True,
    ) -> None:
        self.config = config
        self.topics = list(topics)
        self._start, self._end = start, end
        self._co_partitioned = co_partitioned
        self._consumer: AIOKafkaConsumer | None = None
        self.spans: dict[TopicPartition, tuple[int, int]] = {}
        self.partition_count = 0  # of the inputs, known once entered

    @property
    def total(self) -> int:
        return sum(hi - lo for lo, hi in self.spans.values())

    async def __aenter__(self) -> RangeReader:
        counts = await self._partition_counts()
        self.partition_count = max(counts.values())
        cfg = self.config.kafka
        self._consumer = AIOKafkaConsumer(
            client_id=f"{cfg.client_id}-replay",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_poll_records=cfg.fetch_max_records,
            **client_options(cfg),
        )
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t in self.topics for p in range(counts[t])]
        first = await self._consumer.beginning_offsets(tps)
        last = await self._consumer.end_offsets(tps)
        lo = await self._resolve(self._start, tps, first, last)
        hi = await self._resolve(self._end, tps, first, last)
        self.spans = {tp: (lo[tp], hi[tp]) for tp in tps if lo[tp] < hi[tp]}
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def partitions(self) -> AsyncIterator[list[Record]]:
        """Per partition number, ascending: its records, the topics merged."""
        for p in sorted({tp.partition for tp in self.spans}):
            spans = {tp: span for tp, span in self.spans.items() if tp.partition == p}
            fetched = await self._fetch(spans)
            yield list(self._merged(p, fetched))

    async def _partition_counts(self) -> dict[str, int]:
        cfg = self.config.kafka
        async with admin_client(cfg, client_id=f"{cfg.client_id}-replay") as admin:
            counts = await partition_counts(admin, self.topics)
        missing = [t for t in self.topics if not counts.get(t)]
        if missing:
            raise KafkaSetupError(f"topics {missing} do not exist on {cfg.bootstrap_servers}")
        if self._co_partitioned and len(set(counts.values())) > 1:
            raise KafkaSetupError(
                f"input topics are not co-partitioned: partition counts {counts}; "
                "a replay joins partition p of every input topic"
            )
        return counts

    async def _resolve(
        self,
        pos: Position,
        tps: list[TopicPartition],
        first: dict[TopicPartition, int],
        last: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        assert self._consumer is not None
        if pos.kind == "earliest":
            return dict(first)
        if pos.kind == "latest":
            return dict(last)
        if pos.kind == "offset":
            return {tp: min(max(pos.value, first[tp]), last[tp]) for tp in tps}
        found = await self._consumer.offsets_for_times(dict.fromkeys(tps, pos.value))
        # No record at or after the instant: the position is the log end.
        return {tp: last[tp] if found[tp] is None else found[tp].offset for tp in tps}

    async def _fetch(self, spans: dict[TopicPartition, tuple[int, int]]) -> dict[str, list[Any]]:
        consumer = self._consumer
        assert consumer is not None
        consumer.assign(list(spans))
        for tp, (lo, _) in spans.items():
            consumer.seek(tp, lo)
        out: dict[str, list[Any]] = {tp.topic: [] for tp in spans}
        left = set(spans)
        idle_limit = self.config.kafka.request_timeout_ms / 1000
        last_move = time.monotonic()
        while left:
            batch = await consumer.getmany(*left, timeout_ms=200)
            for tp, records in batch.items():
                out[tp.topic].extend(r for r in records if r.offset < spans[tp][1])
                if records:
                    last_move = time.monotonic()
            for tp in list(left):
                # Positions, not record counts: transaction markers and aborted records
                # take offsets that never arrive as records.
                if await consumer.position(tp) >= spans[tp][1]:
                    left.discard(tp)
                    consumer.pause(tp)
            if left and time.monotonic() - last_move > idle_limit:
                names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(left))
                raise KafkaSetupError(
                    f"replay stalled: nothing read for {idle_limit:.0f}s on {names}"
                )
        return out

    def _merged(self, partition: int, fetched: dict[str, list[Any]]) -> Iterator[Record]:
        index = {t: i for i, t in enumerate(self.topics)}
        streams = [fetched[t] for t in self.topics if t in fetched]
        # heapq.merge keeps each topic's own (offset) order and interleaves the topics.
        for r in heapq.merge(*streams, key=lambda r: (r.timestamp, index[r.topic], r.offset)):
            yield (partition, r.value if r.value is not None else b"", r.timestamp)


async def read_range(
    config: Config,
    topics: Sequence[str],
    start: Position,
    end: Position,
    co_partitioned: bool = True,
    progress: bool | None = None,
) -> list[Record]:
    """All the records of a range, in replay order (for `backtest`, which needs them all)."""
    out: list[Record] = []
    async with RangeReader(config, topics, start, end, co_partitioned) as reader:
        bar = Progress(reader.total, "read", progress)
        async for records in reader.partitions():
            out += records
            bar.advance(len(records))
        bar.close()
    return out


def replay_results(
    config: Config,
    records: Iterable[Record],
    fuser: BatchFuser,
    labels: Mapping[int, Sequence[InRecord]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Fused results of ``records`` in replay order (grouped by partition number): the
    offline engine runs on each partition number in turn, learning from that partition
    number's ``labels`` (as the live worker, whose weights are per partition number)."""
    group: list[Record] = []
    by_partition = labels or {}
    for record in records:
        if group and record[0] != group[-1][0]:
            yield from fuse_records(config, group, fuser, labels=by_partition.get(group[0][0], ()))
            group = []
        group.append(record)
    if group:
        yield from fuse_records(config, group, fuser, labels=by_partition.get(group[0][0], ()))


# -- the command -------------------------------------------------------------------


def run_replay(
    config: Config,
    start: str,
    end: str,
    output: Path | None = None,
    topic: str | None = None,
    strategies: Sequence[str] | None = None,
    progress: bool | None = None,
    labels: Path | None = None,
) -> int:
    """The body of `fusion-worker replay`: returns the exit code (0). ``labels``: a JSON
    Lines file of label events to learn from (one strategy only)."""
    if output is not None and topic is not None:
        raise ConfigError("--topic", topic, "give either --output or --topic, not both")
    if topic is not None and topic in config.kafka.input_topics:
        raise ConfigError("--topic", topic, "is an input topic; results go to another topic")
    lo, hi = Position.parse(start, "--from"), Position.parse(end, "--to")
    fuser = make_fuser(config, strategies)  # a bad --strategy fails before any reading
    label_records: list[InRecord] = []
    if labels is not None:
        if not isinstance(fuser, Fuser):
            raise ConfigError("--labels", str(labels), "learns with one strategy, not several")
        try:
            with labels.open("rb") as lf:
                label_records = read_labels(lf)
        except OSError as exc:
            raise FusionError(f"cannot read {str(labels)!r}: {exc.strerror}") from None
    if output is None:
        return asyncio.run(
            _replay(config, lo, hi, fuser, sys.stdout.buffer, topic, progress, label_records)
        )
    try:
        fh = output.open("wb")
    except OSError as exc:
        raise FusionError(f"cannot write {str(output)!r}: {exc.strerror}") from None
    with fh:
        return asyncio.run(_replay(config, lo, hi, fuser, fh, topic, progress, label_records))


async def _replay(
    config: Config,
    start: Position,
    end: Position,
    fuser: BatchFuser,
    fh: IO[bytes],
    topic: str | None,
    progress: bool | None,
    labels: Sequence[InRecord] = (),
) -> int:
    producer: AIOKafkaProducer | None = None
    if topic is not None:
        producer = AIOKafkaProducer(
            **producer_options(config.kafka, client_id=f"{config.kafka.client_id}-replay")
        )
        await producer.start()
    topics = config.kafka.input_topics
    read = written = 0
    try:
        async with RangeReader(config, topics, start, end) as reader:
            bar = Progress(reader.total, "replay", progress)
            by_partition = labels_by_partition(labels, reader.partition_count)
            async for records in reader.partitions():
                read += len(records)
                results = replay_results(config, _counted(records, bar), fuser, by_partition)
                if producer is None:
                    for r in results:
                        fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
                        written += 1
                else:
                    written += await _publish(producer, topic or "", results)
            bar.close()
        fh.flush()
    finally:
        if producer is not None:
            await producer.stop()
    log.info("replay: %d records of %s -> %d fused results", read, ", ".join(topics), written)
    return 0


def _counted(records: list[Record], bar: Progress, step: int = 1000) -> Iterator[Record]:
    """The records, advancing ``bar`` as the engine takes them."""
    for i in range(0, len(records), step):
        chunk = records[i : i + step]
        yield from chunk
        bar.advance(len(chunk))


async def _publish(
    producer: AIOKafkaProducer, topic: str, results: Iterable[dict[str, Any]]
) -> int:
    """Send results keyed by request_id; returns how many, all acknowledged."""
    n = 0
    pending: list[asyncio.Future[Any]] = []
    for r in results:
        pending.append(await producer.send(topic, orjson.dumps(r), key=r["request_id"].encode()))
        n += 1
        if len(pending) >= PUBLISH_CHUNK:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return n
