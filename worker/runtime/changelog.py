"""The pending-state changelog of the exactly-once worker: its topic, the net change a
transaction writes, and the restore of a partition's pending table.

``<group_id>-pending-changelog`` is compacted, with one partition per input partition
number; key = request_id, value = the JSON of ``JoinTable.pending_state`` (members'
predictions, first event ts, arrival time), a tombstone once the request is fused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError

from worker.config import Config
from worker.errors import KafkaSetupError
from worker.join import JoinTable
from worker.runtime.connect import client_options, close_client
from worker.runtime.topics import partition_counts
from worker.state_deps import describe, describe_change, realign

log = logging.getLogger(__name__)

State = dict[str, Any]
# A restore that reads nothing for this long while short of the partition's end fails
# (and is retried by the caller): the broker is away, waiting inside it would hide that.
RESTORE_STALL_S = 30.0
_POLL_MS = 500
# Bound on stopping the restore reader (it holds nothing that must be flushed).
READER_STOP_S = 5.0


def changelog_topic(config: Config) -> str:
    return f"{config.kafka.group_id}-pending-changelog"


async def ensure_changelog(admin: AIOKafkaAdminClient, config: Config) -> None:
    """Create the changelog with the inputs' partition count if it is missing; refuse a
    changelog with another count (its partition p must hold input partition p's state)."""
    topic = changelog_topic(config)
    inputs = config.kafka.input_topics
    counts = await partition_counts(admin, [*inputs, topic])
    partitions = counts[inputs[0]]
    if counts[topic] == 0:
        brokers = len((await admin.describe_cluster())["brokers"])
        new = NewTopic(
            topic, partitions, min(3, brokers), topic_configs={"cleanup.policy": "compact"}
        )
        await admin.create_topics([new])
        log.info("created changelog topic %s (%d partitions)", topic, partitions)
    elif counts[topic] != partitions:
        raise KafkaSetupError(
            f"changelog {topic} has {counts[topic]} partitions, the inputs {partitions}; "
            "delete it (it is rebuilt) or match the counts"
        )


def net_change(
    table: JoinTable, dirty: set[str], logged: set[str]
) -> list[tuple[bytes, bytes | None]]:
    """The records that bring the changelog up to the table for the requests touched
    since the last commit: a pending request's state, or a tombstone for a request
    the changelog holds and the table no longer has. A request opened and fused in
    between writes nothing."""
    # Most touched requests have closed by the commit: the table picks the open ones and
    # writes their states in one call (a Python iteration and table call per touched
    # request cost ~270 ns; a dict per state and its encoding ~7 µs).
    states = table.pending_json(dirty)
    delta: list[tuple[bytes, bytes | None]] = [(rid.encode(), raw) for rid, raw in states]
    still = [rid for rid, _ in states]
    delta.extend((rid.encode(), None) for rid in logged.intersection(dirty).difference(still))
    return delta


async def read_changelog(
    config: Config, numbers: Iterable[int], beat: Callable[[], None]
) -> dict[int, dict[str, State]]:
    """Read changelog partitions to their end (read_committed, so up to the last stable
    offset: an aborted or still open transaction is not state): last write wins, a
    tombstone removes. ``beat`` is called between polls (the worker's liveness)."""
    topic = changelog_topic(config)
    reader = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        # Where an assigned partition starts: no group, so no committed offset. Set
        # here, not by a seek after the end offsets are read: meanwhile the reader
        # would already be resetting to its default, the end, and a seek while that is
        # under way is overridden by it.
        auto_offset_reset="earliest",
        client_id=f"{config.kafka.client_id}-restore",
        **client_options(config.kafka),
    )
    await reader.start()
    states: dict[int, dict[str, State]] = {p: {} for p in numbers}
    try:
        tps = [TopicPartition(topic, p) for p in states]
        # Paused until the end offsets are known: the fetch of an assigned partition
        # long-polls (fetch_max_wait_ms) and the broker answers one connection's requests
        # in order, so end_offsets waited behind it, 0.5 s at every open. Assigning
        # first fetches the topic's metadata, which end_offsets alone waits a retry
        # backoff for.
        reader.assign(tps)
        reader.pause(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        reader.resume(*remaining)
        stalled = 0.0
        while remaining:
            beat()
            batch = await reader.getmany(*remaining, timeout_ms=_POLL_MS)
            stalled = 0.0 if batch else stalled + _POLL_MS / 1000
            if stalled >= RESTORE_STALL_S:
                raise KafkaTimeoutError(f"restoring {topic}: nothing read for {stalled:.0f}s")
            for tp, records in batch.items():
                table = states[tp.partition]
                for r in records:
                    rid = r.key.decode()
                    if r.value is None:
                        table.pop(rid, None)
                    else:
                        table[rid] = orjson.loads(r.value)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        # Not reader.stop(): during an outage its fetcher's cancellation comes out of it
        # and would end the worker's loop (close_client passes on only our own).
        await close_client(reader, READER_STOP_S)
    return realigned(config, states)


def realigned(config: Config, states: dict[int, dict[str, State]]) -> dict[int, dict[str, State]]:
    """The restored states adapted to the configuration in force (``state_deps.realign``);
    raises ``StateMismatch`` (exit 2) for a change they cannot follow."""
    current = describe(config)
    out: dict[int, dict[str, State]] = {}
    changes: set[str] = set()
    dropped = 0
    for p, table in states.items():
        out[p] = {}
        for rid, state in table.items():
            saved = state.get("deps")
            if saved is not None and saved != current:
                changes.add(describe_change(saved, current))
            adapted = realign(state, current)
            if adapted is None:
                dropped += 1
            else:
                out[p][rid] = adapted
    for change in sorted(changes):
        log.warning("pending state saved under another configuration, realigned: %s", change)
    if dropped:
        log.warning(
            "%d restored pending requests dropped: none of their models is configured", dropped
        )
    return out
