"""The partition state of one worker, owned by the loop (worker/runtime/loop.py).

What it holds: the engine (and so its join tables, one per open partition number), the
consumed positions, the last committed offsets, the partition numbers of the last
assignment applied, whether fetching is paused, and the consumer those refer to. The
loop changes it between batches; a delivery object reads it and asks it to open or close
a partition number, always from inside a call of the loop (``emit``, ``commit``,
``maintain``, ``assigned``), never from a callback of its own.
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.engine import Engine, Step
from worker.join import JoinTable
from worker.metrics import Metrics


class Partitions:
    """Positions, commits, tables and pause state of the partitions this worker owns."""

    def __init__(self, engine: Engine, metrics: Metrics) -> None:
        self.engine = engine
        self._metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.positions: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        # The partition numbers of the last assignment the loop applied.
        self.owned: set[int] = set()
        self.paused = False

    @property
    def tables(self) -> dict[int, JoinTable]:
        """The engine's join tables, by partition number."""
        return self.engine.tables

    def record(self, step: Step) -> None:
        """Remember where the step left each input partition."""
        for (topic, partition), position in step.positions.items():
            self.positions[TopicPartition(topic, partition)] = position

    def open(self, partition: int) -> JoinTable:
        """An empty table for ``partition``: from now on its records are joined."""
        return self.engine.open(partition)

    def close(self, partition: int) -> None:
        """Forget ``partition``'s pending requests and positions and pause its input:
        what was not committed is read again by whoever opens it next."""
        self.engine.close(partition)
        if self.consumer is not None:
            mine = [tp for tp in self.consumer.assignment() if tp.partition == partition]
            self.consumer.pause(*mine)
            for tp in mine:
                self.positions.pop(tp, None)
                self.committed.pop(tp, None)

    def apply(self, assigned: list[TopicPartition]) -> set[int]:
        """Keep the tables of partition numbers that stay, drop the others; returns the
        numbers newly assigned (no table yet), for the delivery to take on."""
        numbers = {tp.partition for tp in assigned}
        self.owned = numbers
        for p in list(self.tables):
            if p not in numbers:
                self.engine.close(p)
        for tp in list(self.positions):
            if tp not in assigned:
                self.positions.pop(tp, None)
                self.committed.pop(tp, None)
                self._metrics.forget_partition(tp.topic, tp.partition)
        return numbers - set(self.tables)

    def resume_kept(self, assigned: list[TopicPartition]) -> None:
        """After ``apply``: a partition we kept continues where we were, not from the
        commit (which sits below our pending requests and would re-fuse some)."""
        consumer = self._consumer()
        for tp in assigned:
            if tp in self.positions:
                consumer.seek(tp, self.positions[tp])
        if self.paused:
            consumer.pause(*assigned)

    def _consumer(self) -> AIOKafkaConsumer:
        assert self.consumer is not None, "the loop has not started"
        return self.consumer

    def of(self, partition: int) -> list[TopicPartition]:
        """The assigned input partitions of one partition number."""
        return [tp for tp in self._consumer().assignment() if tp.partition == partition]
