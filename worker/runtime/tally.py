"""What the loop counts: what one engine step did (once per batch, not per record), and
the partition state at each commit interval (pending requests, their age, lag)."""

from __future__ import annotations

from worker.config import Config
from worker.engine import Step
from worker.metrics import Metrics
from worker.runtime.partitions import Partitions


def tally(metrics: Metrics, config: Config, step: Step) -> None:
    """Count what one engine step did (once per batch, not per record)."""
    k = config.kafka
    if step.finished:
        metrics.output(k.output_topic, len(step.finished))
        if step.results:
            metrics.observe_results(step.results)
        for counted in step.counted:
            metrics.observe_counted(counted)
        if step.uncounted:
            metrics.observe_arrivals(step.uncounted)
    if step.dead_letters:
        metrics.output(k.dlq_topic, step.dead_letters.total())
    if step.late and k.late_topic:
        metrics.output(k.late_topic, step.late)
    if step.records:
        metrics.batch(step.records)
    for model, count in step.accepted.items():
        metrics.count_events(model, "accepted", count)
    for (model, kind), count in step.other.items():
        metrics.count_events(model, kind, count)
    for reason, count in step.dead_letters.items():
        metrics.dlq(reason, count)
    if step.bad_traceparents:
        metrics.bad_traceparent(step.bad_traceparents)


def observe_state(metrics: Metrics, state: Partitions, now_ms: float) -> None:
    """Pending requests, the age of the oldest, and the consumer lag per partition."""
    engine, consumer = state.engine, state.consumer
    assert consumer is not None
    opened = engine.oldest_opened_ms()
    age_s = (now_ms - opened) / 1000 if opened is not None else 0.0
    metrics.set_pending(engine.pending, age_s)
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        position = state.positions.get(tp)
        if high is not None and position is not None:
            metrics.set_lag(tp.topic, tp.partition, max(0, high - position))
