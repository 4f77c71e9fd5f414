"""Reading a range of topics for a replay: the range's ends (``Position``,
``TopicRange``, parsed from the command line) and ``RangeReader``, a consumer in no
group that commits nothing (read_committed) and yields one partition number's records
at a time, the topics merged by (record timestamp, topic index, offset)."""

from __future__ import annotations

import heapq
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.config import Config
from worker.errors import ConfigError, KafkaSetupError
from worker.runtime.connect import admin_client, client_options
from worker.runtime.topics import partition_counts

# (partition, value, record timestamp in ms): what the offline engine reads.
Record = tuple[int, bytes, int | None]


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
