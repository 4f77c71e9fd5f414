"""Latency under load: a producer paced at a fixed rate publishes live while one
at-least-once worker (default settings) fuses; afterwards every result is matched with
the record timestamps of its request's events.

Each request's three model events are published at random delays after the request
starts (0-10 ms, 5-40 ms, 0-20 ms: models answer at different speeds), every event
with the wall-clock time it is handed to the producer as its record timestamp (and its
``ts``). This process shares the cores with the worker and stands in for model services
on other machines, so it does as little as it can while it publishes: the schedule,
ids, partitions and each event's bytes around its ts are made before the start; per
tick of 2 ms it takes the time once for the events due and writes them in one produce
request of its own (bench/raw_produce.py: aiokafka's producer cost 0.4 ms of CPU a
tick); and its garbage collector is off meanwhile (a full collection held the
events stamped before it for up to 0.2 s). Two figures per request, after a warm-up:

- last member -> fused: the fused record's timestamp (set by the worker's producer
  when the result is queued) - the latest record timestamp of the request's events:
  publishing, the broker, fetching, decoding, joining, fusing;
- first event -> fused: the same from the earliest event (it includes the wait for the
  slowest model); the results' own ``latency_ms`` (first event's arrival at the worker
  -> fused, on the worker's clock) is printed beside it.

Where the time goes is split at the broker: the input topic keeps each record's
log-append time (``message.timestamp.type=LogAppendTime``; the events carry their own
``ts``, so the worker reads nothing different), read back after the run, which gives
last member published -> appended (this producer's queue and the broker) and last
member appended -> fused (the worker's fetching, decoding, joining and fusing, and the
wait for a core).

How the tail is made: the share of the requests whose last member took over SLOW_MS
(the goal) to be fused, and the stretches of fused time they fall in. A few long
stretches are the worker catching up after a stall; a tail spread over the whole run
is the cost of every step. Beside the cores busy, how long the worker's loop (its main
thread) was ready to run but waited for a core: the part of a stall that is the
machine's.

Run alone: ``python -m bench.latency --rate EVENTS_PER_S [--seconds S] [--profile FILE]``
(``--profile``: py-spy samples the worker while the load runs; summarise the file with
``python -m bench.profile_report FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import math
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from bench import kit, procs, throughput
from bench.raw_produce import RawProducer
from worker.runtime.partitioner import partitions_for

# Per model: the range (ms) of its delay after the request starts.
DELAYS_MS = ((0.0, 10.0), (5.0, 40.0), (0.0, 20.0))
TICK_S = 0.002
# The goal for last member -> fused (docs/benchmarks.md, "Goals"), and how close together
# the results over it must be fused to count as one stretch of the tail.
SLOW_MS = 20.0
STRETCH_GAP_MS = 100
# What the Kafka Streams contestant (bench/streams/) prints once it processes.
STREAMS_RUNNING = "state RUNNING"
# An event's bytes before and after its ts.
HEAD = b'{"request_id":"%s","model":"%s","ts":'
TAIL = b',"probs":%s,"model_version":"%s-2025.06","trace_id":"%s"}'


def event_parts(key: bytes, model: bytes, probs: bytes) -> tuple[bytes, bytes]:
    """The bytes of an event for request id ``key`` before and after its ts, ``probs`` as
    orjson writes them: joined by the ts's digits, ``kit.event_value``."""
    return HEAD % (key, model), TAIL % (probs, model, key[-16:] * 2)


def event_bytes(key: bytes, model: bytes, ts: int, probs: bytes) -> bytes:
    """``kit.event_value`` for request id ``key``, as the generator writes it."""
    return (b"%d" % ts).join(event_parts(key, model, probs))


@dataclass
class Latency:
    rate: float  # events/s asked for
    achieved: float  # events/s published
    requests: int  # measured (after the warm-up)
    last_to_fused: dict[str, float]  # percentile -> ms
    first_to_fused: dict[str, float]
    result_latency: dict[str, float]  # the results' latency_ms
    # Cores busy while publishing: worker, load generator, the local broker (where its pid
    # is known: cpu_counters), machine, and of the machine's the part the hypervisor stole
    # (procs.machine_stolen_s).
    cores: dict[str, float]
    last_to_appended: dict[str, float]  # last member: published -> appended at the broker
    appended_to_fused: dict[str, float]  # last member: appended at the broker -> fused
    missing: int  # requests without a result
    steps_per_s: float = 0.0  # the worker's non-empty fetches per second while publishing
    # Seconds per second the worker's loop was ready to run but waited for a core while
    # publishing: its share of the tail that is the machine's, not the worker's work
    # (None: not measured, for Kafka Streams or without /proc/PID/schedstat).
    waited: float | None = None
    # Seconds per second of the worker's loop by phase while publishing
    # (fusion_loop_seconds_total: fetch, process, clients, commit).
    loop: dict[str, float] = field(default_factory=dict)
    # The results over SLOW_MS (last member -> fused) by when they were fused: (first,
    # last fused time in ms, how many) of each stretch (see ``stretches``).
    slow: list[tuple[int, int, int]] = field(default_factory=list)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def schedule(
    request_rate: float, seconds: float, rng: np.random.Generator
) -> tuple[list[float], list[int]]:
    """Every event of a run, in the order it is due: (due time in seconds after the
    start, request index * models + model index). Request ``i`` starts at
    ``i / request_rate``; its models answer after delays drawn from DELAYS_MS."""
    per_request = len(DELAYS_MS)
    n = math.ceil(request_rate * seconds)
    lows = np.array([lo for lo, _ in DELAYS_MS]) / 1000
    highs = np.array([hi for _, hi in DELAYS_MS]) / 1000
    starts = np.arange(n, dtype=np.float64) / request_rate
    due = (starts[:, None] + rng.uniform(lows, highs, size=(n, per_request))).ravel()
    order = np.argsort(due, kind="stable")
    due_list: list[float] = due[order].tolist()
    order_list: list[int] = order.tolist()
    return due_list, order_list


@dataclass
class Plan:
    """A run's events, made before the start (see ``prepare``): when each is due, its
    request, and per partition each event's place in ``due``, key and bytes around its
    ts (in lists of their own: no tuple per event for the garbage collector to walk)."""

    topic: str
    partitions: int
    due: list[float]  # seconds after the start, in order
    order: list[int]  # request index * models + model index, by place in ``due``
    rids: list[str]
    places: list[list[int]]
    keys: list[list[bytes]]
    heads: list[list[bytes]]
    tails: list[list[bytes]]


def prepare(topic: str, partitions: int, rate: float, seconds: float, run: str) -> Plan:
    """Everything about requests x 3 events at ``rate`` events/s for ``seconds`` that
    does not depend on the clock. This process shares the cores with the worker and the
    broker, so it is made before the start (and before the cores are counted)."""
    rng = np.random.default_rng(11)
    pool = kit.random_probs(rng, 10_007)
    per_request = len(kit.MODELS)
    due, order = schedule(rate / per_request, seconds, rng)
    n = len(order) // per_request
    rids = [kit.request_id(run, i) for i in range(n)]
    keys = [rid.encode() for rid in rids]
    parts = partitions_for(keys, partitions)
    probs = [orjson.dumps(p) for p in pool]
    models = [m.encode() for m in kit.MODELS]
    places: list[list[int]] = [[] for _ in range(partitions)]
    part_keys: list[list[bytes]] = [[] for _ in range(partitions)]
    heads: list[list[bytes]] = [[] for _ in range(partitions)]
    tails: list[list[bytes]] = [[] for _ in range(partitions)]
    for j, event in enumerate(order):
        r, m = divmod(event, per_request)
        p = parts[r]
        places[p].append(j)
        part_keys[p].append(keys[r])
        head, tail = event_parts(keys[r], models[m], probs[j % len(probs)])
        heads[p].append(head)
        tails[p].append(tail)
    return Plan(topic, partitions, due, order, rids, places, part_keys, heads, tails)


async def publish(bootstrap: str, plan: Plan) -> tuple[list[int], float, float]:
    """Publish ``plan``'s events, each when due. Returns each event's record timestamp
    (ms, by its place in ``plan.due``; ``stamps`` makes them per request), events/s
    achieved, start time (s). Per tick the loop takes the time once (the events due are
    handed over at once), joins each due event's bytes with it, and writes them a
    partition at a time."""
    due, order, places = plan.due, plan.order, plan.places
    part_keys, heads, tails = plan.keys, plan.heads, plan.tails
    sent = [0] * len(order)  # each event's record timestamp, by its place in ``order``
    # Produce requests of its own (bench/raw_produce.py): aiokafka's producer cost about
    # 0.4 ms of CPU a tick whatever it sent, CPU the worker on the same cores then lacked.
    producer = await RawProducer.connect(bootstrap, plan.topic)
    # No collection while publishing: a full one walks everything made above (0.2 s
    # for a 15 s run at 75,000 events/s) and holds the events stamped meanwhile, which
    # then reach the worker late and all at once. The loop makes no reference cycles.
    gc.collect()
    gc.freeze()
    gc.disable()
    started = time.time()
    k = 0
    done = [0] * plan.partitions  # per partition, how many of its events were written
    try:
        while k < len(order):
            until = bisect.bisect_right(due, time.time() - started, lo=k)
            if until > k:
                ts = int(time.time() * 1000)
                digits = b"%d" % ts
                for p in range(plan.partitions):
                    lo = done[p]
                    hi = bisect.bisect_left(places[p], until, lo)
                    if hi > lo:
                        values = [
                            h + digits + t
                            for h, t in zip(heads[p][lo:hi], tails[p][lo:hi], strict=True)
                        ]
                        producer.add(p, part_keys[p][lo:hi], values, ts)
                        done[p] = hi
                producer.send()
                sent[k:until] = [ts] * (until - k)
                k = until
            producer.poll()
            await asyncio.sleep(TICK_S)
        producer.flush()
        achieved = producer.count / (time.time() - started)
    finally:
        gc.enable()
        gc.unfreeze()
        producer.close()
    return sent, achieved, started


def stamps(
    rids: Sequence[str], order: Sequence[int], sent: Sequence[int]
) -> dict[str, tuple[int, int]]:
    """{request_id: (first, last) record timestamp} from each event's timestamp
    ``sent[k]``, event ``k`` being request ``order[k] // models``'s."""
    by_event = np.empty(len(order), dtype=np.int64)
    by_event[np.asarray(order, dtype=np.int64)] = sent
    per_request = by_event.reshape(len(rids), -1)
    firsts: list[int] = per_request.min(axis=1).tolist()
    lasts: list[int] = per_request.max(axis=1).tolist()
    return dict(zip(rids, zip(firsts, lasts, strict=True), strict=True))


@contextlib.asynccontextmanager
async def running(
    contestant: str, bootstrap: str, topics: tuple[str, str, str]
) -> AsyncIterator[tuple[procs.Process, int | None]]:
    """The process fusing ``topics`` (input, output, dead letters): the worker
    (at-least-once, its metrics port yielded) or, for one of ``throughput.JVM_MODES``,
    the Kafka Streams application (no metrics port), once it is ready."""
    group = kit.unique("group-lat")
    if contestant not in throughput.JVM_MODES:
        async with procs.running_worker(bootstrap, topics, group) as (proc, port):
            yield proc, port
        return
    inp, out, dlq = topics
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        proc = throughput.contestant(contestant, bootstrap, [inp], out, dlq, group, Path(tmp), 0)
        proc.start()
        try:
            await wait_logged(proc, STREAMS_RUNNING)
            yield proc, None
        finally:
            proc.stop()
            await kit.delete_topics(bootstrap, [throughput.changelog_topic(group)])


async def wait_logged(proc: procs.Process, line: str, timeout_s: float = 60.0) -> None:
    """Wait until ``proc``'s log holds ``line``; RuntimeError if it ends or takes longer."""
    until = time.monotonic() + timeout_s
    while line not in proc.log.read_text(errors="replace"):
        if not proc.alive():
            raise RuntimeError(f"the contestant ended before {line!r}:\n{proc.tail()}")
        if time.monotonic() > until:
            raise RuntimeError(f"no {line!r} within {timeout_s:.0f}s:\n{proc.tail()}")
        await asyncio.sleep(0.2)


async def run(
    bootstrap: str,
    rate: float,
    seconds: float,
    partitions: int,
    warmup_s: float = 3.0,
    profile: Path | None = None,
    contestant: str = "at-least-once",
) -> Latency:
    name = kit.unique("lat")
    topics = (f"{name}-in", f"{name}-out", f"{name}-dlq")
    inp, out, _ = topics
    append_time = {inp: {"message.timestamp.type": "LogAppendTime"}}
    plan = prepare(inp, partitions, rate, seconds, name)  # before the worker starts
    async with kit.topics(bootstrap, dict.fromkeys(topics, partitions), append_time):
        async with running(contestant, bootstrap, topics) as (worker, port):
            profiler = procs.Profiler(worker.pid, profile) if profile and port else None
            steps_before = metric_steps(port)
            loop_before = procs.loop_seconds(port) if port else {}
            waited_before = worker.waited_s() if port else None
            broker = procs.local_broker_pid(bootstrap)
            who = "kafka streams" if contestant in throughput.JVM_MODES else "worker"
            started_at = time.monotonic()
            before = cpu_counters(who, worker, broker)
            sent, achieved, started = await publish(bootstrap, plan)
            after = cpu_counters(who, worker, broker)
            by_request = stamps(plan.rids, plan.order, sent)
            wall = time.monotonic() - started_at
            waited_after = worker.waited_s() if port else None
            steps = metric_steps(port) - steps_before
            loop: dict[str, float] = {}
            if port:
                loop = {k: v - loop_before[k] for k, v in procs.loop_seconds(port).items()}
            if profiler is not None:
                profiler.stop()
            filled = await kit.wait_filled(bootstrap, out, len(by_request), timeout_s=60)
            if filled.done is None:
                print(f"only {filled.end} of {len(by_request)} results arrived")
        output = await kit.read_output(bootstrap, out)
        appended = await last_appended(bootstrap, inp)
    # The worker's steps (non-empty fetches) per second while publishing: the fewer, the
    # larger each batch and the less the fixed cost of a step counts.
    steps_per_s = steps / wall
    cores = {name: (after[name] - before[name]) / wall for name in before}
    since_ms = (started + warmup_s) * 1000
    lat = figures(rate, achieved, by_request, output, since_ms, appended, cores)
    lat.steps_per_s = steps_per_s
    if waited_before is not None and waited_after is not None:
        lat.waited = (waited_after - waited_before) / wall
    lat.loop = {phase: seconds / wall for phase, seconds in loop.items()}
    return lat


def cpu_counters(who: str, contestant: procs.Process, broker: int | None) -> dict[str, float]:
    """CPU seconds so far, by name in the order printed: the contestant's (``who``), this
    process's (the load generator), the local broker's (where ``broker``, its pid, is
    known: the three share the machine's cores), the machine's busy and, within that,
    stolen by the hypervisor."""
    used = contestant.usage(broker)
    counters = {who: used.cpu_s, "load generator": time.process_time()}
    if used.broker_cpu_s is not None:
        counters["local broker"] = used.broker_cpu_s
    counters["machine"] = procs.machine_busy_s()
    counters["stolen from it"] = procs.machine_stolen_s()
    return counters


def metric_steps(port: int | None) -> float:
    """The worker's non-empty fetches so far (0 without a worker's metrics)."""
    return (procs.metric(port, "fusion_batch_size_count") or 0.0) if port else 0.0


async def last_appended(bootstrap: str, topic: str) -> dict[str, int]:
    """{request_id: the log-append time of its latest event} of the input ``topic``
    (keys are request ids)."""
    latest: dict[str, int] = {}
    async for r in kit.read_all(bootstrap, topic, committed_only=False):
        rid = r.key.decode()
        latest[rid] = max(latest.get(rid, 0), r.timestamp)
    return latest


def figures(
    rate: float,
    achieved: float,
    stamps: dict[str, tuple[int, int]],
    output: kit.Output,
    since_ms: float,
    appended: dict[str, int] | None = None,
    cores: dict[str, float] | None = None,
) -> Latency:
    """The percentiles of the requests whose first event was published at ``since_ms``
    or later (after the warm-up), matched with their results in ``output`` and, where
    known, their last event's log-append time in ``appended``."""
    measured = [rid for rid, (first, _) in stamps.items() if first >= since_ms]
    last_to_fused, first_to_fused, result_latency = [], [], []
    to_appended, appended_to_fused = [], []
    slow_at: list[int] = []
    appended = appended or {}
    missing = 0
    for rid in measured:
        fused = output.timestamps.get(rid)
        if fused is None:
            missing += 1
            continue
        first, last = stamps[rid]
        last_to_fused.append(fused - last)
        if fused - last > SLOW_MS:
            slow_at.append(fused)
        first_to_fused.append(fused - first)
        result_latency.append(output.latency_ms[rid])
        at = appended.get(rid)
        if at is not None:
            to_appended.append(at - last)
            appended_to_fused.append(fused - at)
    return Latency(
        rate=rate,
        achieved=achieved,
        requests=len(measured),
        last_to_fused=percentiles(last_to_fused),
        first_to_fused=percentiles(first_to_fused),
        result_latency=percentiles(result_latency),
        cores=cores or {},
        last_to_appended=percentiles(to_appended),
        appended_to_fused=percentiles(appended_to_fused),
        missing=missing,
        slow=stretches(slow_at),
    )


def stretches(fused_ms: Sequence[int], gap_ms: int = STRETCH_GAP_MS) -> list[tuple[int, int, int]]:
    """The fused times ``fused_ms`` (any order) cut where two neighbours are more than
    ``gap_ms`` apart: (first, last, how many) of each stretch, in time order. A tail
    made of a few long stretches is the worker catching up after a stall; one spread
    over the run is the cost of every step."""
    out: list[tuple[int, int, int]] = []
    for t in sorted(fused_ms):
        if out and t - out[-1][1] <= gap_ms:
            first, _, count = out[-1]
            out[-1] = (first, t, count + 1)
        else:
            out.append((t, t, 1))
    return out


def show(r: Latency) -> str:
    def fmt(p: dict[str, float]) -> str:
        return " / ".join(f"{p[k]:.0f}" for k in ("p50", "p95", "p99", "max")) if p else "-"

    return (
        f"latency at {r.achieved:,.0f} events/s ({r.rate:,.0f} asked), {r.requests:,} requests "
        f"after the warm-up, {r.missing} without a result; p50 / p95 / p99 / max ms:\n"
        f"  last member -> fused   {fmt(r.last_to_fused)}\n"
        f"  first event -> fused   {fmt(r.first_to_fused)}\n"
        f"  result latency_ms      {fmt(r.result_latency)}\n"
        f"  split of the first line at the broker's log-append time:\n"
        f"  last member -> appended   {fmt(r.last_to_appended)}\n"
        f"  appended -> fused         {fmt(r.appended_to_fused)}\n"
        f"  cores busy while publishing: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r.cores.items())
        + f" (of {os.cpu_count()})"
        + (f"; the worker's steps {r.steps_per_s:,.0f}/s" if r.steps_per_s else "")
        + (
            f"; its loop waited for a core {1000 * r.waited:.0f} ms/s"
            if r.waited is not None
            else ""
        )
        + loop_split(r)
        + slow_split(r)
    )


def slow_split(r: Latency) -> str:
    """How many requests took over SLOW_MS, and in how many stretches of fused time."""
    measured = r.requests - r.missing
    if not measured:
        return ""
    slow = sum(count for _, _, count in r.slow)
    line = f"\n  last member -> fused over {SLOW_MS:.0f} ms: {slow / measured:.2%} of the requests"
    if not r.slow:
        return line
    first, last, count = max(r.slow, key=lambda s: s[1] - s[0])
    return line + (
        f", in {len(r.slow)} stretches of fused time (the longest "
        f"{(last - first) / 1000:.2f} s, with {count / slow:.0%} of them)"
    )


def loop_split(r: Latency) -> str:
    """Where the worker's loop spent its time: shares, and ms per step."""
    if not r.loop or not r.steps_per_s:
        return ""
    shares = ", ".join(f"{k} {v:.0%}" for k, v in r.loop.items())
    per_step = " / ".join(f"{1000 * v / r.steps_per_s:.2f}" for v in r.loop.values())
    return f"\n  the worker's loop: {shares}; per step ms ({' / '.join(r.loop)}): {per_step}"


def main() -> None:
    p = argparse.ArgumentParser(description="Latency of the worker under a paced load.")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--rate", type=float, required=True, help="input events per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--profile", type=Path, help="sample the worker with py-spy while publishing, into FILE"
    )
    p.add_argument(
        "--contestant",
        choices=("at-least-once", *throughput.JVM_MODES),
        default="at-least-once",
        help="the worker, or the Kafka Streams application of bench/streams/ (make bench-jvm)",
    )
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="published, not counted")
    args = p.parse_args()
    lat = run(
        args.bootstrap,
        args.rate,
        args.seconds,
        args.partitions,
        warmup_s=args.warmup_seconds,
        profile=args.profile,
        contestant=args.contestant,
    )
    print(show(asyncio.run(lat)))


if __name__ == "__main__":
    main()
