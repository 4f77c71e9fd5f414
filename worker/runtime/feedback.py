"""The live worker's side of learning from labels: the labels topic beside the inputs,
the adaptive weights' snapshot topic, and the feedback tallies for the metrics.

The learning itself is pure (worker/learning.py, called by the engine step). This module
only does its I/O:

- at start: the labels topic ([feedback] topic) must exist and be co-partitioned with
  the inputs (a label must land on its request's partition number); the compacted
  ``<group_id>-weights`` topic is created if missing (one partition; key = the input
  partition number, value = ``AdaptiveWeights.to_state`` as JSON);
- on assignment: each newly owned partition number resumes from its latest snapshot
  (read to the end, read_committed); none: the configured weights;
- at-least-once: before offsets are committed, the snapshots of the partition numbers
  whose weights moved are written and acknowledged, so a committed label's update is
  never lost. A crash between the two re-reads some labels; they join only requests
  fused again since the restart (the feedback memory is not restored), so an update
  may repeat, never go missing: at-least-once, as the results.
- exactly-once: ``records`` hands the snapshot of a partition number to its
  transaction, so weights, outputs and offsets commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError

from worker.config import Config
from worker.engine import Step
from worker.errors import KafkaSetupError
from worker.fusion import Fuser
from worker.fusion.adaptive import AdaptiveStateError
from worker.learning import Learning
from worker.metrics import Metrics
from worker.runtime.connect import client_options
from worker.runtime.topics import partition_counts

log = logging.getLogger(__name__)

# A restore that reads nothing for this long while short of the end fails (the broker is
# away; the caller's retry policy decides).
RESTORE_STALL_S = 30.0
_POLL_MS = 500


def weights_topic(config: Config) -> str:
    return f"{config.kafka.group_id}-weights"


class FeedbackLink:
    """The labels topic and the weights snapshots of one worker (see the module doc).
    ``learning`` is what the engine is given; None when no labels topic is configured."""

    def __init__(self, config: Config, fuser: Fuser) -> None:
        self.config = config
        self.topic = config.feedback.topic
        self.learning: Learning | None = Learning(config, fuser.weights) if self.topic else None
        if config.fusion.weights == "adaptive" and not self.topic:
            log.warning(
                'fusion.weights = "adaptive" without feedback.topic: the weights never move'
            )
        # Partition numbers whose weights moved since their last snapshot.
        self.dirty: set[int] = set()

    @property
    def adaptive(self) -> bool:
        return self.learning is not None and self.learning.adaptive

    def topics(self) -> list[str]:
        """The topics to subscribe to besides the inputs."""
        return [self.topic] if self.topic else []

    async def check(self, admin: AIOKafkaAdminClient) -> None:
        """At start: the labels topic is co-partitioned with the inputs; the weights topic
        exists (created compacted, with one partition, when missing)."""
        if not self.topic:
            return
        await check_labels_topic(admin, self.config)
        if self.adaptive:
            await ensure_weights_topic(admin, self.config)

    def noted(self, step: Step) -> None:
        """After a step: remember which partition numbers' weights moved."""
        self.dirty.update(step.weights)

    def keep(self, numbers: Iterable[int]) -> None:
        """After a rebalance: only the partition numbers still ours are ours to snapshot."""
        self.dirty.intersection_update(numbers)

    def records(self, numbers: Iterable[int]) -> list[tuple[bytes, bytes]]:
        """(key, value) snapshots of the given partition numbers' weights, for the
        weights topic."""
        learning = self.learning
        if learning is None or not learning.adaptive:
            return []
        return [(str(p).encode(), orjson.dumps(learning.state(p))) for p in sorted(numbers)]

    def take(self) -> tuple[set[int], list[tuple[bytes, bytes]]]:
        """At-least-once, when a commit is captured: the snapshots of the moved weights
        now (their partition numbers, the records), no longer dirty (``unsaved`` marks
        them again if writing them fails). Empty unless the weights are adaptive."""
        if not self.dirty or not self.adaptive:
            return set(), []
        numbers, self.dirty = self.dirty, set()
        return numbers, self.records(numbers)

    def unsaved(self, numbers: Iterable[int]) -> None:
        """Snapshots ``take`` gave that were not written: the next commit writes them."""
        self.dirty.update(numbers)

    async def save(self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]) -> None:
        """At-least-once, before the offsets: write ``records`` (``take``) and wait for
        the acks."""
        if not records:
            return
        topic = weights_topic(self.config)
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        for f in futures:
            await f

    async def restore(self, numbers: Iterable[int], beat: Callable[[], None]) -> None:
        """Resume the given partition numbers from their latest snapshots."""
        learning = self.learning
        wanted = set(numbers)
        if learning is None or not learning.adaptive or not wanted:
            return
        states = await read_weights(self.config, beat)
        for p in sorted(wanted):
            learning.close(p)
            state = states.get(p)
            if state is None:
                continue
            try:
                learning.restore(p, state)
            except AdaptiveStateError as exc:
                # Not fatal: the partition starts again from the configured weights and
                # its next snapshot replaces the one that does not fit.
                log.error("partition %d: weights snapshot ignored: %s", p, exc)
                continue
            log.info("partition %d resumes with weights %s", p, state.get("weights"))


async def check_labels_topic(admin: AIOKafkaAdminClient, config: Config) -> None:
    """Refuse a labels topic ([feedback] topic) that is missing or has another partition
    count than the inputs: a label must land on its request's partition number."""
    topic, first = config.feedback.topic, config.kafka.input_topics[0]
    counts = await partition_counts(admin, [first, topic])
    if counts[topic] == 0:
        raise KafkaSetupError(
            f"labels topic {topic} (feedback.topic) does not exist; create it with the "
            f"inputs' {counts[first]} partitions"
        )
    if counts[topic] != counts[first]:
        raise KafkaSetupError(
            f"labels topic {topic} has {counts[topic]} partitions, the inputs "
            f"{counts[first]}: a label must land on its request's partition number; give "
            "it the inputs' count, keyed by request_id"
        )


async def ensure_weights_topic(admin: AIOKafkaAdminClient, config: Config) -> None:
    """Create ``<group_id>-weights`` (compacted, one partition) if it is missing."""
    topic = weights_topic(config)
    if (await partition_counts(admin, [topic]))[topic] == 0:
        brokers = len((await admin.describe_cluster())["brokers"])
        new = NewTopic(topic, 1, min(3, brokers), topic_configs={"cleanup.policy": "compact"})
        await admin.create_topics([new])
        log.info("created weights topic %s", topic)


async def read_weights(config: Config, beat: Callable[[], None]) -> dict[int, dict[str, Any]]:
    """The latest snapshot per partition number of the weights topic (read to its end,
    read_committed: an aborted transaction's snapshot is not state)."""
    topic = weights_topic(config)
    reader = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id=f"{config.kafka.client_id}-weights",
        **client_options(config.kafka),
    )
    await reader.start()
    states: dict[int, dict[str, Any]] = {}
    try:
        tp = TopicPartition(topic, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        stalled = 0.0
        while await reader.position(tp) < end:
            beat()
            batch = await reader.getmany(tp, timeout_ms=_POLL_MS)
            stalled = 0.0 if batch else stalled + _POLL_MS / 1000
            if stalled >= RESTORE_STALL_S:
                raise KafkaTimeoutError(f"reading {topic}: nothing read for {stalled:.0f}s")
            for r in batch.get(tp, ()):
                if r.key is None or r.value is None:
                    continue
                states[int(r.key)] = orjson.loads(r.value)
    finally:
        await reader.stop()
    return states


def tally_feedback(metrics: Metrics, step: Step) -> None:
    """Hand a step's feedback tallies to the metrics: label events by outcome, the quality
    windows and the moved weights. Weights are kept per partition number; the gauge shows
    the mean of those that moved in this step (one worker, one series per model)."""
    for outcome, n in step.feedback.items():
        metrics.count_feedback(outcome, n)
    if step.quality is not None:
        metrics.observe_quality(step.quality)
    if step.weights:
        metrics.set_weights(np.mean(list(step.weights.values()), axis=0).tolist())
