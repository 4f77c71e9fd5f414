"""The latency benchmark (bench/latency.py): its load generator's schedule, the event
bytes it writes and the timestamps it reports are what the benchmark claims, and so is
how it reports the tail; no broker."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import kit, latency, procs


@given(rate=st.floats(50.0, 5_000.0), seconds=st.floats(0.01, 0.5), seed=st.integers(0, 99))
@settings(max_examples=60, deadline=None)
def test_schedule_has_each_event_once_in_due_order(rate: float, seconds: float, seed: int) -> None:
    """Every model's event of every request comes once, in the order it is due, at its
    request's start plus a delay within that model's range."""
    due, order = latency.schedule(rate, seconds, np.random.default_rng(seed))
    per_request = len(latency.DELAYS_MS)
    n = len(order) // per_request
    assert n == int(np.ceil(rate * seconds))
    assert sorted(order) == list(range(n * per_request))
    assert due == sorted(due)
    for at, event in zip(due, order, strict=True):
        request, model = divmod(event, per_request)
        lo, hi = latency.DELAYS_MS[model]
        delay_ms = (at - request / rate) * 1000
        assert lo - 1e-6 <= delay_ms <= hi + 1e-6


def test_stamps_are_each_requests_first_and_last_event() -> None:
    """A request's (first, last) are the least and greatest timestamps of its events,
    whatever their places in the schedule."""
    rids = ["a", "b"]
    # events by place: b's model 2, a's model 0, b's 0, a's 2, a's 1, b's 1
    order = [5, 0, 3, 2, 1, 4]
    sent = [10, 11, 12, 13, 14, 15]
    assert latency.stamps(rids, order, sent) == {"a": (11, 14), "b": (10, 15)}


@given(
    i=st.integers(0, 10**9 - 1),
    model=st.sampled_from(kit.MODELS),
    ts=st.integers(0, 2**50),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_event_bytes_are_kit_event_value(i: int, model: str, ts: int, seed: int) -> None:
    """The generator's formatted event is byte for byte the one ``kit.event_value``
    writes, so the worker reads the same events as in the other benchmarks."""
    probs = kit.random_probs(np.random.default_rng(seed), 1)[0]
    rid = kit.request_id("lat-0a1b2c", i)
    got = latency.event_bytes(rid.encode(), model.encode(), ts, orjson.dumps(probs))
    assert got == kit.event_value(rid, model, ts, probs)


def test_stretches_cut_where_results_are_far_apart() -> None:
    """Fused times more than the gap apart start a new stretch; the order they come in
    does not matter."""
    assert latency.stretches([400, 0, 120, 50, 390], gap_ms=100) == [(0, 120, 3), (390, 400, 2)]
    assert latency.stretches([], gap_ms=100) == []


@given(times=st.lists(st.integers(0, 10_000), max_size=60), gap=st.integers(0, 500))
@settings(max_examples=200, deadline=None)
def test_stretches_hold_every_time_once(times: list[int], gap: int) -> None:
    """Every fused time is in one stretch; within a stretch neighbours are at most the
    gap apart, and between stretches more than it."""
    out = latency.stretches(times, gap_ms=gap)
    assert sum(count for _, _, count in out) == len(times)
    for first, last, count in out:
        inside = sorted(t for t in times if first <= t <= last)
        assert len(inside) == count
        assert all(b - a <= gap for a, b in itertools.pairwise(inside))
    for (_, last, _), (first, _, _) in itertools.pairwise(out):
        assert first - last > gap


def test_figures_count_the_requests_over_the_goal_by_stretch() -> None:
    """The requests whose last member took over SLOW_MS to be fused are counted in
    stretches of their fused times; those before the warm-up are left out."""
    stamps = {"warm": (0, 5), "a": (100, 110), "b": (100, 120), "c": (100, 130), "d": (900, 910)}
    output = kit.Output(
        # last member -> fused: warm 100 (left out), a 5, b 40, c 50, d 60
        timestamps={"warm": 105, "a": 115, "b": 160, "c": 180, "d": 970},
        latency_ms=dict.fromkeys(stamps, 0),
    )
    lat = latency.figures(1.0, 1.0, stamps, output, since_ms=100)
    assert lat.requests == 4
    assert lat.slow == [(160, 180, 2), (970, 970, 1)]
    assert "over 20 ms: 75.00% of the requests, in 2 stretches" in latency.show(lat)


async def test_wait_logged_returns_once_the_line_is_logged(tmp_path: Path) -> None:
    """The load starts once the contestant logged its line (Kafka Streams: RUNNING)."""
    line = latency.STREAMS_RUNNING
    code = f"import time; time.sleep(0.3); print({line!r}, flush=True); time.sleep(30)"
    proc = procs.Process(["-c", code], tmp_path / "c.log").start()
    try:
        await latency.wait_logged(proc, latency.STREAMS_RUNNING, timeout_s=20)
        assert proc.alive()
    finally:
        proc.stop()


async def test_wait_logged_fails_when_the_contestant_ends_without_it(tmp_path: Path) -> None:
    """A contestant that ends before it is ready stops the run with its log's tail."""
    proc = procs.Process(["-c", "print('usage: ...')"], tmp_path / "c.log").start()
    with pytest.raises(RuntimeError, match=r"(?s)ended before.*usage"):
        await latency.wait_logged(proc, latency.STREAMS_RUNNING, timeout_s=20)


async def test_wait_logged_gives_up_after_its_timeout(tmp_path: Path) -> None:
    """A contestant that never logs the line stops the run after the timeout."""
    proc = procs.Process(["-c", "import time; time.sleep(30)"], tmp_path / "c.log").start()
    try:
        with pytest.raises(RuntimeError, match="within 1s"):
            await latency.wait_logged(proc, latency.STREAMS_RUNNING, timeout_s=1)
    finally:
        proc.stop()


async def test_waited_counts_the_time_a_process_waits_for_a_core(tmp_path: Path) -> None:
    """Three busy processes on one core: each waits for it about two thirds of the time
    (and runs one third), and ``waited_s`` (the run delay of its main thread) says so;
    ``show`` prints the share."""
    spin = (
        "import os, time; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "t = time.time() + 30\nwhile time.time() < t: pass"
    )
    procs_ = [procs.Process(["-c", spin], tmp_path / f"{i}.log").start() for i in range(3)]
    try:
        await asyncio.sleep(0.5)  # all three pinned and spinning
        before, t0 = procs_[0].waited_s(), time.monotonic()
        await asyncio.sleep(1.0)
        after, t1 = procs_[0].waited_s(), time.monotonic()
        assert before is not None
        assert after is not None
        waited = (after - before) / (t1 - t0)
    finally:
        for proc in procs_:
            proc.stop()
    assert 0.5 < waited <= 1.0
    lat = latency.figures(1.0, 1.0, {}, kit.Output(timestamps={}, latency_ms={}), since_ms=0)
    lat.waited = waited
    assert f"its loop waited for a core {1000 * waited:.0f} ms/s" in latency.show(lat)


def test_no_wait_figure_means_no_wait_in_the_line(tmp_path: Path) -> None:
    """Where the kernel keeps no run delay (no /proc/PID/schedstat: here, a process that
    has ended) ``waited_s`` is None, and the latency line says nothing of a wait."""
    proc = procs.Process(["-c", "pass"], tmp_path / "c.log").start()
    proc.stop()
    assert proc.waited_s() is None
    lat = latency.figures(1.0, 1.0, {}, kit.Output(timestamps={}, latency_ms={}), since_ms=0)
    assert "waited for a core" not in latency.show(lat)


def test_no_metrics_port_means_no_steps() -> None:
    """Without the worker's metrics (the Kafka Streams contestant) the steps are 0, so the
    report leaves the worker's step line out."""
    assert latency.metric_steps(None) == 0.0


def test_cpu_counters_add_the_local_broker_only_where_its_pid_is_known(tmp_path: Path) -> None:
    """The cores printed while publishing are the contestant's, the generator's, the local
    broker's where its pid is known (it shares the cores: a broker elsewhere does not),
    the machine's and the stolen part, in that order; the broker's is its process's CPU."""
    proc = procs.Process(["-c", "import time; time.sleep(30)"], tmp_path / "c.log").start()
    try:
        spinner = procs.Process(
            ["-c", "import time\nt = time.time() + 30\nwhile time.time() < t: pass"],
            tmp_path / "s.log",
        ).start()
        try:
            time.sleep(0.3)
            before = latency.cpu_counters("worker", proc, spinner.pid)
            time.sleep(0.5)
            after = latency.cpu_counters("worker", proc, spinner.pid)
        finally:
            spinner.stop()
        without = latency.cpu_counters("worker", proc, None)
    finally:
        proc.stop()
    names = ["worker", "load generator", "local broker", "machine", "stolen from it"]
    assert list(before) == names
    assert list(without) == [n for n in names if n != "local broker"]
    # The stand-in broker spun through the half second (a busy machine may give it less
    # than all of it); the sleeping contestant used next to nothing.
    assert after["local broker"] - before["local broker"] > 0.1
    assert after["worker"] - before["worker"] < 0.05
