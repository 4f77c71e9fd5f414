"""Throughput on the real broker: the passthrough baseline, the worker at-least-once and
the worker exactly-once, one after another on the same pre-loaded input.

Each contestant is a fresh process in a fresh consumer group with its own output topic.
Its figure is input events / (the moment its last result became readable in the output
topic - the moment the process was spawned), subtracting nothing: the interpreter's
start and imports, connecting, the topic checks, joining the group (and, exactly-once,
initialising one transactional producer per partition and reading the empty changelog)
are all in it. The time from spawn to the first readable result is printed beside it.

Run alone: ``python -m bench.throughput [--requests N] [--partitions P]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from bench import kit, procs

MODES = ("passthrough-record", "passthrough-batch", "at-least-once", "exactly-once")


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

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    @property
    def steady_events_per_s(self) -> float:
        """Events over the time results flowed (spawn-to-first-result left out)."""
        return self.events / max(1e-9, self.seconds - self.first_s)

    @property
    def cpu_us_per_event(self) -> float:
        """CPU per event once results flow (start-up left out)."""
        return (self.cpu_s - self.startup_cpu_s) / self.events * 1e6


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
    sending, or the worker with its delivery and metrics on ``port``; its config and
    log go into ``workdir``."""
    log = workdir / f"{mode}.log"
    if mode.startswith("passthrough"):
        argv = ["-m", "bench.passthrough", "--bootstrap", bootstrap, "--input", *inputs]
        argv += ["--output", output, "--group", group, "--send", mode.split("-")[1]]
        return procs.Process(argv, log)
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
    proc = contestant(mode, bootstrap, inputs, output, dlq, group, workdir, port).start()
    profiler = procs.Profiler(proc.pid, profile / f"{mode}.txt") if profile else None
    try:
        filled = await kit.wait_filled(bootstrap, output, requests, timeout_s, sample=proc.cpu_s)
        cpu = proc.cpu_s() if proc.alive() else float("nan")
        # Read once the last result is visible, i.e. after the last commit.
        changelog = procs.metric(port, "fusion_changelog_records_total")
        transactions = procs.metric(port, 'fusion_transactions_total{outcome="committed"}')
        loop = procs.loop_seconds(port) if not mode.startswith("pass") else None
        if profiler is not None:
            profiler.stop()
        if filled.done is None or not proc.alive():
            raise RuntimeError(
                f"{mode}: {filled.end} of {requests} results within {timeout_s:.0f}s\n"
                + proc.tail()
            )
    finally:
        proc.stop()
        if mode == "exactly-once":
            await kit.delete_topics(bootstrap, [f"{group}-pending-changelog"])
    assert filled.first is not None
    out = await kit.read_output(bootstrap, output) if not mode.startswith("pass") else None
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
    )


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
        if "exactly-once" in modes:
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
    if r.changelog_records is not None and r.mode == "exactly-once":
        per = r.changelog_records / max(1, r.results)
        changelog = f" | changelog {r.changelog_records:,} records = {per:.3f} per fused request"
        if r.transactions is not None:
            changelog += f", {r.transactions:,} transactions committed"
    loop = ""
    if r.loop and sum(r.loop.values()):
        total = sum(r.loop.values())
        loop = " | loop " + ", ".join(f"{k} {v / total:.0%}" for k, v in r.loop.items())
    return (
        f"{r.mode:<19} {r.events_per_s:>9,.0f} events/s{ratio} | {r.seconds:5.1f}s "
        f"(first result after {r.first_s:.1f}s; {r.steady_events_per_s:,.0f} events/s after "
        f"it) | CPU {r.cpu_us_per_event:.1f} us/event after start-up "
        f"({r.startup_cpu_s:.1f}s before) | {r.results:,} results, "
        f"{r.duplicates} duplicates{check}{changelog}{loop}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description="Throughput of the worker against the passthrough.")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--repeat", type=int, default=1, help="runs per mode; the fastest counts")
    p.add_argument("--profile", type=Path, help="write py-spy collapsed stacks here")
    args = p.parse_args()
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
    print(f"({time.monotonic() - started:.0f}s in all)")


if __name__ == "__main__":
    main()
