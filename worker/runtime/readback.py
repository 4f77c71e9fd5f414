"""At-least-once read-back: at assignment, learn which requests were already fused after
the committed offsets, so that their re-read events are ``late`` (counted, not published
again) instead of repeating their results.

How. With the output topic co-partitioned with the inputs (same partition count; results
keyed by request_id with murmur2), output partition p holds exactly the results of input
partition p. Each at-least-once commit stores, in the committed offset's metadata, an
output offset (the *mark*) such that every result of a request that may still be re-read
from the committed offset ``c`` lies at or after the mark. At assignment the new owner
reads output partition p from the mark to its end and remembers those request ids as
fused in the join table of p (``JoinTable.remember_fused``).

Why the mark is not simply the output's end at commit time: the committed offset trails
the position (it stays below the oldest pending request), so results published during
the last interval may belong to requests with events at or after ``c``. The mark is
therefore the output's end captured at an earlier commit, when the consumed position
was still <= ``c``: a request with an event at or after ``c`` closed after that event
was read, so after that capture. The requests read back at assignment were fused by
earlier owners from events before the input's end at assignment, with results after the
mark read back from: until the position passes that end, that mark is a floor.

Which end. A commit captures the consumed positions and takes every output queued so far
(worker/runtime/at_least_once.py); once all of them are acknowledged, their own offsets
give, per output partition, the end of what they wrote (``Sink.acknowledged``). Every
result queued after the capture is handed to the producer after them, and the producer
keeps a partition's batches in order, so it lands at or after that end: the end is a
floor, exact while we are the partition's only writer, and costs no request (it was a
ListOffsets of the output at each commit, which the loop waited for).

What remains: results of requests fused by a previous owner but not yet written when it
died are published again (a repeat, never a worse one: their events are all re-read);
a read-back cut short by ``readback_max_records`` / ``readback_timeout_ms`` leaves the
rest to be fused again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from worker.config import Config
from worker.join import JoinTable
from worker.runtime.connect import admin_client, client_options, close_client
from worker.runtime.topics import partition_counts

log = logging.getLogger(__name__)

MARK_VERSION = 1
# Snapshots kept per input partition while its commit is held back (one per commit).
MAX_SNAPSHOTS = 1000
_POLL_MS = 200
# The reader's retry backoff (at most the worker's): see _start_reader.
READER_RETRY_BACKOFF_MS = 20
# Errors that only cost a read-back (more repeats), never the worker.
_SOFT_ERRORS = (KafkaError, TimeoutError, OSError)
# How often a wait on the broker beats the liveness clock.
_BEAT_S = 0.1
T = TypeVar("T")


def encode_mark(output_topic: str, offset: int) -> str:
    """The committed offset's metadata: where to read ``output_topic`` back from."""
    return orjson.dumps({"v": MARK_VERSION, "output": output_topic, "mark": offset}).decode()


def decode_mark(metadata: str | None, output_topic: str) -> int | None:
    """The mark stored by ``encode_mark`` for ``output_topic``; None for anything else
    (no metadata, another writer's, another output topic)."""
    if not metadata:
        return None
    try:
        data = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("v") != MARK_VERSION:
        return None
    mark = data.get("mark")
    if data.get("output") != output_topic or not isinstance(mark, int) or mark < 0:
        return None
    return mark


class Marks:
    """Which output mark a commit may store. Pure bookkeeping, no I/O.

    Per input partition: snapshots ``(position, output end)`` taken before commits, while
    the position was that; a commit at offset ``c`` stores the mark of the latest
    snapshot with ``position <= c`` (see the module docstring), never above the floor of
    the partition while its position is below the floor's end.
    """

    def __init__(self) -> None:
        self._snapshots: dict[TopicPartition, list[tuple[int, int]]] = {}
        self._floors: dict[TopicPartition, tuple[int, int]] = {}  # (mark, until position)

    def start(self, tp: TopicPartition, position: int, mark: int) -> None:
        """A newly assigned partition: reading starts at ``position`` and every result
        of a request that may be read again from there lies at or after ``mark``."""
        self._snapshots[tp] = [(position, mark)]

    def has(self, tp: TopicPartition) -> bool:
        return bool(self._snapshots.get(tp))

    def floor(self, tp: TopicPartition, mark: int, until: int) -> None:
        """No snapshot of ``tp`` at a position below ``until`` has a mark above ``mark``."""
        self._floors[tp] = (mark, until)

    def record(self, tp: TopicPartition, position: int, output_end: int) -> None:
        """A snapshot: consumed up to ``position``; the output partition ends at
        ``output_end``."""
        floor = self._floors.get(tp)
        if floor is not None:
            if position < floor[1]:
                output_end = min(output_end, floor[0])
            else:
                del self._floors[tp]
        snaps = self._snapshots.setdefault(tp, [])
        if snaps and snaps[-1][0] >= position:
            # Same position: the later capture is as valid and reads back less.
            if snaps[-1][0] == position:
                snaps[-1] = (position, max(snaps[-1][1], output_end))
            return
        snaps.append((position, output_end))
        if len(snaps) > MAX_SNAPSHOTS:
            del snaps[0]

    def mark_for(self, tp: TopicPartition, offset: int) -> int | None:
        """The mark a commit of ``offset`` stores (None: no valid one); older snapshots
        are dropped, since commits do not go back."""
        snaps = self._snapshots.get(tp)
        if not snaps:
            return None
        best = None
        for i, (position, _mark) in enumerate(snaps):
            if position > offset:
                break
            best = i
        if best is None:
            return None
        del snaps[:best]
        return snaps[0][1]

    def forget(self, keep: Collection[TopicPartition]) -> None:
        """Drop the partitions not in ``keep`` (revoked)."""
        for tp in [tp for tp in self._snapshots if tp not in keep]:
            del self._snapshots[tp]
        for tp in [tp for tp in self._floors if tp not in keep]:
            del self._floors[tp]


class ReadBack:
    """The read-back of one at-least-once worker: ``snapshot`` and ``annotate`` around
    each commit, ``assigned`` on each assignment, ``close`` at the end."""

    def __init__(self, config: Config, beat: Callable[[], None]) -> None:
        self._config = config
        self._beat = beat
        self._output = config.kafka.output_topic
        self._max_records = config.kafka.readback_max_records
        self._budget_s = config.kafka.readback_timeout_ms / 1000
        self.marks = Marks()
        self._enabled: bool | None = None if self._max_records else False
        self._reader: AIOKafkaConsumer | None = None
        # Per output partition, the highest end seen (at assignment, in snapshots): every
        # result queued later lands at or after it.
        self._known_ends: dict[int, int] = {}

    async def close(self) -> None:
        if self._reader is not None:
            await close_client(self._reader, 5.0)
            self._reader = None

    async def _start_reader(self) -> AIOKafkaConsumer:
        if self._reader is None:
            k = self._config.kafka
            # A short retry backoff: the first request about a topic (the end offsets of
            # the inputs, then of the output) finds no metadata for it and waits one
            # backoff for the refresh it triggers. With the worker's (500 ms) that held
            # every assignment for a second, even with nothing to read back.
            options = client_options(k) | {
                "retry_backoff_ms": min(k.retry_backoff_ms, READER_RETRY_BACKOFF_MS)
            }
            reader = AIOKafkaConsumer(
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id=f"{k.client_id}-readback",
                **options,
            )
            await reader.start()
            self._reader = reader
        return self._reader

    async def _check(self) -> bool:
        """Whether the output topic is co-partitioned with the inputs (once)."""
        if self._enabled is None:
            k = self._config.kafka
            async with admin_client(k) as admin:
                counts = await partition_counts(admin, [k.input_topics[0], self._output])
            inputs, outputs = counts[k.input_topics[0]], counts[self._output]
            self._enabled = inputs == outputs
            if not self._enabled:
                log.warning(
                    "read-back off: output topic %s has %d partitions, the inputs %d; "
                    "results of requests fused before a crash may be published again",
                    self._output,
                    outputs,
                    inputs,
                )
        return self._enabled

    async def _ends(self, numbers: Iterable[int]) -> dict[int, int]:
        reader = await self._start_reader()
        tps = [TopicPartition(self._output, p) for p in numbers]
        async with asyncio.timeout(self._config.kafka.request_timeout_ms / 1000):
            ends = await reader.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}

    # -- around a commit -------------------------------------------------------------------

    def snapshot(self, positions: Mapping[TopicPartition, int], acked: Mapping[int, int]) -> None:
        """Before a commit: note, with the consumed ``positions`` captured for it, an end
        of each output partition that no result queued after that capture lies below:
        ``acked`` (per output partition, the end of what the outputs taken with the
        positions wrote, all acknowledged; ``Sink.acknowledged``), else the highest end
        known before (an earlier snapshot's, the end read at assignment). A floor of the
        output's end, exact while we are its only writer, and no request to the broker."""
        if not self._enabled or not positions:
            return
        known = self._known_ends
        for p, end in acked.items():
            if end > known.get(p, -1):
                known[p] = end
        for tp, position in positions.items():
            floor = known.get(tp.partition)
            if floor is not None:
                self.marks.record(tp, position, floor)

    def annotate(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, object]:
        """The offsets to commit, each with its mark as metadata (when it has one)."""
        out: dict[TopicPartition, object] = {}
        for tp, offset in offsets.items():
            mark = self.marks.mark_for(tp, offset)
            out[tp] = OffsetAndMetadata(
                offset, "" if mark is None else encode_mark(self._output, mark)
            )
        return out

    # -- at assignment -----------------------------------------------------------------------

    async def assigned(
        self,
        assigned: Collection[TopicPartition],
        new: Collection[int],
        tables: Mapping[int, JoinTable],
        now_ms: int,
    ) -> None:
        """Read back the output partitions of the ``new`` partition numbers and remember
        their request ids as fused in ``tables``. Never raises: a failed read-back only
        means more repeats."""
        self.marks.forget(assigned)
        if not new:
            return
        started = time.monotonic()
        try:
            located = await self._beating(self._locate(assigned, new))
        except _SOFT_ERRORS as exc:
            log.warning(
                "read-back of partitions %s failed (%r); their repeats stay", sorted(new), exc
            )
            return
        if located is None:
            return
        starts, ends = located
        for p, end in ends.items():
            self._known_ends[p] = max(end, self._known_ends.get(p, end))
        for tp in assigned:
            # Without a mark, all that is read again is fused by us: after the end now.
            if tp.partition in new and not self.marks.has(tp):
                self.marks.start(tp, 0, ends.get(tp.partition, 0))
        wanted = {p: (s, ends[p]) for p, s in starts.items() if p in ends and s < ends[p]}
        ids = await self._read(wanted, started + self._budget_s)
        total = 0
        for p, found in ids.items():
            table = tables.get(p)
            if table is not None:
                total += table.remember_fused(found, now_ms)
        log.info(
            "read back %d fused request ids from %s partitions %s in %.0f ms",
            total,
            self._output,
            sorted(wanted),
            (time.monotonic() - started) * 1000,
        )

    async def _locate(
        self, assigned: Collection[TopicPartition], new: Collection[int]
    ) -> tuple[dict[int, int], dict[int, int]] | None:
        """Where to read back from and to, per output partition (None: read-back off)."""
        if not await self._check():
            return None
        mine = [tp for tp in assigned if tp.partition in new]
        reader = await self._start_reader()
        async with asyncio.timeout(self._config.kafka.request_timeout_ms / 1000):
            input_ends = await reader.end_offsets(mine)
        return await self._starts(mine, input_ends), await self._ends(new)

    async def _beating(self, step: Coroutine[Any, Any, T]) -> T:
        """``step`` within the read-back budget, beating the liveness clock meanwhile:
        starting the reader and asking the broker where to read take their round trips
        (a second on a busy machine, ``request_timeout_ms`` in an outage), all inside the
        assignment callback, where the loop cannot beat; waiting on them is not being
        stuck. Past the budget: TimeoutError."""
        task = asyncio.ensure_future(step)
        try:
            async with asyncio.timeout(self._budget_s):
                while not task.done():
                    await asyncio.wait({task}, timeout=_BEAT_S)
                    self._beat()
            return task.result()
        finally:
            task.cancel()

    async def _starts(
        self, tps: list[TopicPartition], input_ends: Mapping[TopicPartition, int]
    ) -> dict[int, int]:
        """Per partition number, where to read the output back from: the smallest mark
        stored with its inputs' committed offsets (none if one input has a commit
        without a mark). Sets the snapshots and floors of ``tps``."""
        if not tps:
            return {}
        k = self._config.kafka
        async with asyncio.timeout(k.request_timeout_ms / 1000):
            async with admin_client(k) as admin:
                committed = await admin.list_consumer_group_offsets(k.group_id, partitions=tps)
        marks: dict[int, int | None] = {}
        for tp in tps:
            meta = committed.get(tp)
            if meta is None or meta.offset < 0:
                continue  # never committed: read from the reset position, nothing to skip
            mark = decode_mark(meta.metadata, self._output)
            prior = marks.get(tp.partition, -1)
            if mark is None or prior is None:
                marks[tp.partition] = None
            else:
                marks[tp.partition] = mark if prior < 0 else min(prior, mark)
        starts: dict[int, int] = {}
        for p, mark in marks.items():
            if mark is None:
                continue  # a commit without a mark: nothing to read back
            starts[p] = mark
            for tp in tps:
                meta = committed.get(tp)
                if tp.partition == p and meta is not None and meta.offset >= 0:
                    self.marks.start(tp, meta.offset, mark)
                    self.marks.floor(tp, mark, input_ends.get(tp, 0))
        return starts

    async def _read(
        self, wanted: dict[int, tuple[int, int]], deadline: float
    ) -> dict[int, set[str]]:
        """The keys of output partition p from ``wanted[p] = (start, end)``, within
        ``readback_max_records`` per partition and until ``deadline`` (monotonic)."""
        ids: dict[int, set[str]] = {p: set() for p in wanted}
        if not wanted:
            return ids
        reader = await self._start_reader()
        tps = {TopicPartition(self._output, p): span for p, span in wanted.items()}
        counts = dict.fromkeys(tps, 0)
        try:
            reader.assign(list(tps))
            for tp, (start, _) in tps.items():
                reader.seek(tp, start)
            remaining = set(tps)
            while remaining and time.monotonic() < deadline:
                self._beat()
                batch = await reader.getmany(*remaining, timeout_ms=_POLL_MS)
                for tp, records in batch.items():
                    end = tps[tp][1]
                    found = ids[tp.partition]
                    for r in records:
                        if r.offset < end and r.key is not None:
                            found.add(r.key.decode("utf-8", "replace"))
                    counts[tp] += len(records)
                    if records[-1].offset + 1 >= end or counts[tp] >= self._max_records:
                        remaining.discard(tp)
        except _SOFT_ERRORS as exc:
            log.warning("read-back interrupted (%r); the rest may be published again", exc)
            remaining = set()
        finally:
            reader.unsubscribe()
        if remaining:
            log.warning(
                "read-back cut short at %.1f s or %d records per partition: %s; results "
                "after that may be published again",
                self._budget_s,
                self._max_records,
                ", ".join(f"{tp.partition}: {counts[tp]} read" for tp in sorted(remaining)),
            )
        return ids
