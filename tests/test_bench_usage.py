"""What the throughput benchmark reports beside the rates: the contestant's main thread
on a core, waiting for one and idle while results flowed, and the local broker's cores
(bench/procs.py, bench/kit.py, bench/throughput.py). Three tests use the real local broker."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bench import kit, procs, throughput
from tests.kafka_fixtures import TopicFactory, produce


def _run(**usage: float | None) -> throughput.Run:
    # Results flowed for 2 s: spawn -> first result 1 s, spawn -> last 3 s.
    return throughput.Run(
        mode="at-least-once",
        events=3,
        requests=1,
        seconds=3.0,
        first_s=1.0,
        cpu_s=1.0,
        startup_cpu_s=0.5,
        results=1,
        duplicates=0,
        **usage,  # type: ignore[arg-type]
    )


def test_the_local_broker_is_found_by_its_port(kafka_bootstrap: str) -> None:
    """The broker the tests run on (started by deploy/kafka-dev/kafka.sh) is found from
    its pid file, and its CPU time can be read."""
    pid = procs.local_broker_pid(kafka_bootstrap)
    assert pid is not None
    assert b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert procs.pid_cpu_s(pid) > 0


def test_a_pid_file_of_another_process_names_no_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid file left behind whose pid is now another process (here this one), one that
    is not a number, and none at all: no broker, rather than another process's CPU."""
    monkeypatch.setenv("KAFKA_DEV_HOME", str(tmp_path))
    assert procs.local_broker_pid("127.0.0.1:19092") is None
    (tmp_path / "run-19092").mkdir()
    pidfile = tmp_path / "run-19092" / "kafka.pid"
    pidfile.write_text("not a pid")
    assert procs.local_broker_pid("127.0.0.1:19092") is None
    pidfile.write_text(str(os.getpid()))
    assert procs.local_broker_pid("127.0.0.1:19092") is None


def test_a_process_usage_reads_its_main_thread_and_the_broker(kafka_bootstrap: str) -> None:
    """A snapshot of a running process: its CPU, its main thread's time on a core (at
    least most of the CPU it burnt, all in that thread), and the local broker's CPU."""
    burn = "import time\nwhile time.process_time() < 0.3: pass\ntime.sleep(60)"
    proc = procs.Process(["-c", burn], Path(os.devnull)).start()
    try:
        deadline = time.monotonic() + 30
        while proc.cpu_s() < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        usage = proc.usage(procs.local_broker_pid(kafka_bootstrap))
    finally:
        proc.stop()
    assert usage.cpu_s >= 0.2
    assert usage.on_core_s is not None
    assert usage.on_core_s >= 0.15  # the CPU figure counts in ticks, the thread's in ns
    assert usage.waited_s is not None
    assert usage.waited_s >= 0
    assert usage.broker_cpu_s is not None
    assert usage.broker_cpu_s > 0


def test_the_time_results_flowed_is_split_three_ways() -> None:
    """On a core, waiting for one and the rest (idle) are shares of the time results
    flowed; the broker's CPU seconds become cores over that time."""
    line = throughput.cores(_run(on_core_s=1.6, waited_s=0.1, broker_cpu_s=0.7))
    assert line == (
        " | main thread on a core 80%, waiting for one 5%, idle 15% | broker 0.35 cores"
    )


def test_figures_not_measured_are_left_out() -> None:
    """A JVM contestant (no main-thread figures) shows only the broker; a broker
    elsewhere (no CPU seen) shows nothing."""
    assert throughput.cores(_run(broker_cpu_s=0.7)) == " | broker 0.35 cores"
    assert throughput.cores(_run()) == ""


async def test_the_last_sample_is_taken_when_the_results_stop(
    kafka_bootstrap: str, make_topics: TopicFactory
) -> None:
    """``wait_filled`` keeps the sample taken when the end offsets last moved, not one
    after the quiet time that tells it they stopped: the window it bounds is the time
    results flowed."""
    [topic] = await make_topics(1)

    async def publish() -> None:
        await produce(kafka_bootstrap, topic, [(b"k", b"1")])
        await asyncio.sleep(0.5)
        await produce(kafka_bootstrap, topic, [(b"k", b"2")])

    publishing = asyncio.create_task(publish())
    filled = await kit.wait_filled(
        kafka_bootstrap, topic, 2, 30.0, settle_s=1.0, sample=time.monotonic
    )
    await publishing
    assert filled.first is not None
    assert filled.done is not None
    assert filled.first <= filled.first_sample < filled.first + 0.2
    assert filled.done <= filled.last_sample < filled.done + 0.2
    assert filled.last_sample - filled.first_sample > 0.3
