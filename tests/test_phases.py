"""The loop's lap clock (worker/runtime/phases.py): each lap adds the time since the
previous one to its phase's fusion_loop_seconds_total."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from worker.metrics import Metrics
from worker.runtime.phases import Phases


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def seconds(registry: CollectorRegistry, phase: str) -> float:
    value = registry.get_sample_value("fusion_loop_seconds_total", {"phase": phase})
    assert value is not None
    return value


def test_each_lap_adds_the_time_since_the_previous_lap_to_its_phase() -> None:
    """Laps of 2 s fetch, 0.5 s process, 0.25 s clients, then 1 s fetch: fetch totals
    3 s, process 0.5 s, clients 0.25 s, commit stays 0."""
    registry, clock = CollectorRegistry(), Clock()
    phases = Phases(Metrics(registry, process_metrics=False), clock)
    for phase, took in (("fetch", 2.0), ("process", 0.5), ("clients", 0.25), ("fetch", 1.0)):
        clock.now += took
        phases.lap(phase)
    assert seconds(registry, "fetch") == 3.0
    assert seconds(registry, "process") == 0.5
    assert seconds(registry, "clients") == 0.25
    assert seconds(registry, "commit") == 0.0


def test_reset_drops_the_time_before_it() -> None:
    """The time between construction and reset() (the worker's start-up) counts in no
    phase: the first lap after reset() measures from reset()."""
    registry, clock = CollectorRegistry(), Clock()
    phases = Phases(Metrics(registry, process_metrics=False), clock)
    clock.now += 30.0
    phases.reset()
    clock.now += 0.125
    phases.lap("fetch")
    assert seconds(registry, "fetch") == 0.125
