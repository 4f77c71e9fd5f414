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
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer

from worker.config import Config
from worker.engine import InRecord
from worker.errors import ConfigError, FusionError
from worker.events import FinishedRequest
from worker.fusion import Fuser, registry
from worker.fusion.result import result_json
from worker.offline import BatchFuser, fuse_records, labels_by_partition, read_labels
from worker.replay_read import Position as Position
from worker.replay_read import RangeReader
from worker.replay_read import Record as Record
from worker.replay_read import TopicRange as TopicRange
from worker.runtime.connect import producer_options

log = logging.getLogger(__name__)

# Wait for the output topic's acknowledgements every this many results (bounded memory).
PUBLISH_CHUNK = 10_000


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
                        fh.write(result_json(r) + b"\n")
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
        pending.append(await producer.send(topic, result_json(r), key=r["request_id"].encode()))
        n += 1
        if len(pending) >= PUBLISH_CHUNK:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return n
