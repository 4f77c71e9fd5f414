"""Throughput on the real broker: the passthrough baseline, the worker at-least-once and
the worker exactly-once, one after another on the same pre-loaded input.

Each contestant is a fresh process in a fresh consumer group with its own output topic.
Its figure is input events / (the moment its last result became readable in the output
topic - the moment the process was spawned), subtracting nothing: the interpreter's
start and imports, connecting, the topic checks, joining the group (and, exactly-once,
initialising one transactional producer per partition and reading the empty changelog)
are all in it. The time from spawn to the first readable result is printed beside it.

The Kafka Streams contestant (``JVM_MODES``: bench/streams/, a JVM application doing the
worker's join and fusion) is measured the same way, from the spawn of its ``java``
process; ``make bench-jvm`` builds it and runs it beside the worker. It is not one of the
default ``MODES`` (``make bench`` needs no Java).

Run alone: ``python -m bench.throughput [--requests N] [--partitions P] [--modes ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench import kit, procs

MODES = ("passthrough-record", "passthrough-batch", "at-least-once", "exactly-once")
# The worker's delivery modes (its metrics and loop phases are read after a run).
WORKER_MODES = ("at-least-once", "exactly-once")
# The Kafka Streams application of bench/streams/ with each processing guarantee.
JVM_MODES = ("streams-at-least-once", "streams-exactly-once")
GUARANTEES = {"streams-at-least-once": "at_least_once", "streams-exactly-once": "exactly_once_v2"}
STREAMS_JAR = Path(__file__).resolve().parent / "streams" / "target" / "fusion-streams.jar"


@dataclass
class Run:
    mode: str
    events: int
    requests: int
    seconds: float  # spawn -> last result readable
    first_s: float  # spawn -> first result readable
    cpu_s: float  # the process's CPU time until the last result
    startup_cpu_s: float  # ... until the first result
    results: int
    duplicates: int
    changelog_records: int | None = None  # exactly-once: records written to the changelog
    transactions: int | None = None  # exactly-once: transactions committed
    loop: dict[str, float] | None = None  # the worker's loop seconds by phase
    # The machine's CPU seconds stolen by the hypervisor from spawn to the last result
    # (procs.machine_stolen_s): the figures of a run with much of it are the machine's.
    stolen_s: float = 0.0
    # While results flowed (first result -> last): the seconds the process's main thread
    # (the worker's and the passthrough's event loop) was on a core and was ready to run
    # but waited for one, and the local broker's CPU seconds; None where not measured
    # (a JVM contestant's main thread is not its stream thread; a broker elsewhere).
    on_core_s: float | None = None
    waited_s: float | None = None
    broker_cpu_s: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def steady_events_per_s(self) -> float:
        """Events over the time results flowed (spawn-to-first-result left out)."""
        return self.events / max(1e-9, self.seconds - self.first_s)

    @property
    def stolen_share(self) -> float:
        """Of the machine's cores over the run, the share the hypervisor stole."""
        return self.stolen_s / (self.seconds * (os.cpu_count() or 1))

    def share(self, seconds: float | None) -> float | None:
        """``seconds`` per second of the time results flowed."""
        return None if seconds is None else seconds / max(1e-9, self.seconds - self.first_s)

    @property
    def cpu_us_per_event(self) -> float:
        """CPU per event once results flow (start-up left out)."""
        return (self.cpu_s - self.startup_cpu_s) / self.events * 1e6


def changelog_topic(group: str) -> str:
    """The changelog of the worker's exactly-once join state in consumer group ``group``;
    also that of the Kafka Streams application's store (its application id is ``group``,
    its store is named ``pending``)."""
    return f"{group}-pending-changelog"


def streams_jar() -> Path:
    """The Kafka Streams contestant's jar (STREAMS_JAR); FileNotFoundError, naming the make
    target that builds it, when it is not there."""
    jar = STREAMS_JAR
    if not jar.is_file():
        raise FileNotFoundError(
            f"{jar} is missing: `make bench-jvm` builds it "
            "(mvn -q -B -f bench/streams/pom.xml package; Java 17+ and Maven)"
        )
    return jar


def java() -> str:
    """The ``java`` on PATH; FileNotFoundError when there is none."""
    found = shutil.which("java")
    if found is None:
        raise FileNotFoundError("java is not on PATH: the streams-* modes need Java 17+")
    return found


def streams_argv(
    mode: str, jar: Path, bootstrap: str, inputs: list[str], output: str, group: str
) -> list[str]:
    """The arguments of ``java`` for the Kafka Streams contestant ``mode`` (one of
    JVM_MODES): its jar, then bootstrap, input topics (comma-separated), output topic,
    application id (``group``) and processing guarantee."""
    return ["-jar", str(jar), bootstrap, ",".join(inputs), output, group, GUARANTEES[mode]]


def contestant(
    mode: str,
    bootstrap: str,
    inputs: list[str],
    output: str,
    dlq: str,
    group: str,
    workdir: Path,
    port: int,
) -> procs.Process:
    """The process of ``mode`` (not started yet): the passthrough with its way of
    sending, the worker with its delivery and metrics on ``port``, or the Kafka Streams
    application with its processing guarantee; its config and log go into ``workdir``."""
    log = workdir / f"{mode}.log"
    if mode.startswith("passthrough"):
        argv = ["-m", "bench.passthrough", "--bootstrap", bootstrap, "--input", *inputs]
        argv += ["--output", output, "--group", group, "--send", mode.split("-")[1]]
        return procs.Process(argv, log)
    if mode in JVM_MODES:
        argv = streams_argv(mode, streams_jar(), bootstrap, inputs, output, group)
        return procs.Process(argv, log, program=java())
    sections = procs.worker_sections(bootstrap, inputs, output, dlq, group, port, mode)
    return procs.worker_process(procs.write_config(workdir / f"{mode}.toml", sections), log)


async def measure(
    mode: str,
    bootstrap: str,
    inputs: list[str],
    output: str,
    dlq: str,
    requests: int,
    events: int,
    workdir: Path,
    timeout_s: float,
    profile: Path | None = None,
) -> Run:
    group = kit.unique(f"group-{mode}")
    port = procs.free_port()
    stolen_before = procs.machine_stolen_s()
    broker = procs.local_broker_pid(bootstrap)
    proc = contestant(mode, bootstrap, inputs, output, dlq, group, workdir, port).start()
    # What the process and the broker used, at the first result and at each later one:
    # the first and the last bound the time results flowed (kit.wait_filled).
    usages: list[procs.Usage] = []

    def sample() -> float:
        usages.append(proc.usage(broker))
        return usages[-1].cpu_s

    profiler = None
    if profile is not None and mode not in JVM_MODES:  # py-spy samples Python only
        profiler = procs.Profiler(proc.pid, profile / f"{mode}.txt")
    measured = False
    try:
        filled = await kit.wait_filled(bootstrap, output, requests, timeout_s, sample=sample)
        cpu = proc.cpu_s() if proc.alive() else float("nan")
        stolen_s = procs.machine_stolen_s() - stolen_before
        changelog = transactions = None
        loop = None
        if mode in WORKER_MODES:
            # Read once the last result is visible, i.e. after the last commit.
            changelog = procs.metric(port, "fusion_changelog_records_total")
            transactions = procs.metric(port, 'fusion_transactions_total{outcome="committed"}')
            loop = procs.loop_seconds(port)
        if profiler is not None:
            profiler.stop()
        if filled.done is None or not proc.alive():
            raise RuntimeError(
                f"{mode}: {filled.end} of {requests} results within {timeout_s:.0f}s\n"
                + proc.tail()
            )
        measured = True
    finally:
        proc.stop()
        try:
            if measured and mode in JVM_MODES:
                # Kafka Streams' internal topic (the store's changelog; the topology has
                # no repartition topic): its records counted, as the worker counts its own.
                changelog = await count_records(bootstrap, changelog_topic(group))
        finally:
            if mode == "exactly-once" or mode in JVM_MODES:
                await kit.delete_topics(bootstrap, [changelog_topic(group)])
    assert filled.first is not None
    out = await kit.read_output(bootstrap, output) if not mode.startswith("pass") else None
    first, last = usages[0], usages[-1]
    thread = mode not in JVM_MODES
    return Run(
        mode=mode,
        events=events,
        requests=requests,
        seconds=filled.done - proc.started,
        first_s=filled.first - proc.started,
        cpu_s=cpu,
        startup_cpu_s=filled.first_sample,
        results=len(out.ids) if out else filled.end,
        duplicates=out.duplicates if out else 0,
        changelog_records=int(changelog) if changelog is not None else None,
        transactions=int(transactions) if transactions is not None else None,
        loop=loop,
        stolen_s=stolen_s,
        on_core_s=_delta(first.on_core_s, last.on_core_s) if thread else None,
        waited_s=_delta(first.waited_s, last.waited_s) if thread else None,
        broker_cpu_s=_delta(first.broker_cpu_s, last.broker_cpu_s),
    )


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


async def count_records(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (aborted ones too; commit markers are not
    records)."""
    count = 0
    async for _ in kit.read_all(bootstrap, topic, idle_s=0.5, committed_only=False):
        count += 1
    return count


async def run(
    bootstrap: str,
    requests: int,
    partitions: int,
    modes: tuple[str, ...] = MODES,
    timeout_s: float = 300.0,
    profile: Path | None = None,
    repeat: int = 1,
) -> list[Run]:
    """Load ``requests`` x 3 events, then measure the modes in ``repeat`` rounds, each
    mode once a round (so that a burst of other work on the machine falls on every mode
    alike, not on the one measured then); returns the fastest run of each mode (the
    least disturbed by other processes)."""
    if set(modes) & set(JVM_MODES):
        streams_jar()  # before loading anything
        java()
    name = kit.unique("tp")
    specs = {f"{name}-in": partitions, f"{name}-dlq": partitions}
    async with kit.topics(bootstrap, specs):
        count, seconds = await kit.load(
            bootstrap, f"{name}-in", partitions, kit.events(requests, name)
        )
        print(
            f"loaded {count:,} events ({requests:,} requests x {len(kit.MODELS)} models) "
            f"in {seconds:.1f}s: {count / seconds:,.0f} events/s (generating them included)"
        )
        if {"exactly-once", "streams-exactly-once"} & set(modes):
            warm_s = await warm_transactions(bootstrap)
            print(f"the broker's transaction log ready in {warm_s:.1f}s")
        tries: dict[str, list[Run]] = {mode: [] for mode in modes}
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            for i in range(repeat):
                for mode in modes:
                    output = f"{name}-out-{mode}-{i}"
                    await kit.create_topics(bootstrap, {output: partitions})
                    try:
                        r = await measure(
                            mode,
                            bootstrap,
                            [f"{name}-in"],
                            output,
                            f"{name}-dlq",
                            requests,
                            count,
                            Path(tmp),
                            timeout_s,
                            profile,
                        )
                    finally:
                        await kit.delete_topics(bootstrap, [output])
                    print(line(r, [t for runs in tries.values() for t in runs]), flush=True)
                    tries[mode].append(r)
    if repeat > 1 and {"at-least-once", "exactly-once"} <= set(modes):
        ratios = [
            e.events_per_s / a.events_per_s
            for a, e in zip(tries["at-least-once"], tries["exactly-once"], strict=True)
        ]
        print(
            "exactly-once / at-least-once, round by round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f" (median {statistics.median(ratios):.2f})"
        )
    return [max(runs, key=lambda r: r.events_per_s) for runs in tries.values()]


async def warm_transactions(bootstrap: str) -> float:
    """Start and stop one transactional producer, unmeasured; returns the seconds it took.

    A broker creates its transaction log at the first transactional producer it meets:
    on a broker just started, the first exactly-once run paid that (its first result
    after 1.4 s against 0.7 s in the next rounds), as a fresh deployment does once."""
    started = time.monotonic()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=kit.unique("warm"))
    await producer.start()
    await producer.stop()
    return time.monotonic() - started


def baseline(runs: list[Run]) -> Run | None:
    """The fastest passthrough: the ceiling the ratios refer to."""
    passes = [r for r in runs if r.mode.startswith("passthrough")]
    return max(passes, key=lambda r: r.events_per_s) if passes else None


def line(r: Run, before: list[Run]) -> str:
    base = baseline(before)
    ratio = f" = {r.events_per_s / base.events_per_s:.2f}x baseline" if base else ""
    check = "" if r.results == r.requests and not r.duplicates else " RESULTS WRONG"
    changelog = ""
    if r.changelog_records is not None and r.mode in ("exactly-once", *JVM_MODES):
        per = r.changelog_records / max(1, r.results)
        changelog = f" | changelog {r.changelog_records:,} records = {per:.3f} per fused request"
        if r.transactions is not None:
            changelog += f", {r.transactions:,} transactions committed"
    loop = ""
    if r.loop and sum(r.loop.values()):
        total = sum(r.loop.values())
        loop = " | loop " + ", ".join(f"{k} {v / total:.0%}" for k, v in r.loop.items())
    return (
        f"{r.mode:<21} {r.events_per_s:>9,.0f} events/s{ratio} | {r.seconds:5.1f}s "
        f"(first result after {r.first_s:.1f}s; {r.steady_events_per_s:,.0f} events/s after "
        f"it) | CPU {r.cpu_us_per_event:.1f} us/event after start-up "
        f"({r.startup_cpu_s:.1f}s before) | {r.results:,} results, "
        f"{r.duplicates} duplicates{check}{changelog}{loop}{cores(r)} | "
        f"stolen {r.stolen_share:.1%} of the machine"
    )


def cores(r: Run) -> str:
    """Where the time went while results flowed: the main thread on a core, waiting for
    one, and neither (waiting for the broker, or nothing to do), and the local broker's
    cores; empty where not measured."""
    on, waited, broker = r.share(r.on_core_s), r.share(r.waited_s), r.share(r.broker_cpu_s)
    out = ""
    if on is not None and waited is not None:
        idle = max(0.0, 1.0 - on - waited)
        out += f" | main thread on a core {on:.0%}, waiting for one {waited:.0%}, idle {idle:.0%}"
    if broker is not None:
        out += f" | broker {broker:.2f} cores"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="Throughput of the worker against the passthrough.")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES + JVM_MODES,
        default=list(MODES),
        help=f"default: {' '.join(MODES)}; the JVM ones need make bench-jvm's jar",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per mode; the fastest counts")
    p.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    args = p.parse_args()
    if set(args.modes) & set(JVM_MODES):
        try:
            streams_jar()
            java()
        except FileNotFoundError as e:
            p.error(str(e))
    started = time.monotonic()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs = asyncio.run(
        run(
            args.bootstrap,
            args.requests,
            args.partitions,
            tuple(args.modes),
            profile=args.profile,
            repeat=args.repeat,
        )
    )
    alo = next((r for r in runs if r.mode == "at-least-once"), None)
    eo = next((r for r in runs if r.mode == "exactly-once"), None)
    if alo and eo:
        print(f"exactly-once / at-least-once: {eo.events_per_s / alo.events_per_s:.2f}")
    for worker in (alo, eo):
        streams = next((r for r in runs if worker and r.mode == f"streams-{worker.mode}"), None)
        if worker and streams:
            ratio = worker.events_per_s / streams.events_per_s
            print(f"worker / Kafka Streams, {worker.mode}: {ratio:.2f}")
    print(f"({time.monotonic() - started:.0f}s in all)")


if __name__ == "__main__":
    main()
