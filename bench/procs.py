"""Processes of the end-to-end benchmarks: a worker's configuration, a process with its
CPU time and resident memory, py-spy sampling it, its HTTP endpoints, a ready worker for
the length of a block, and the machine the figures were measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.kit import LABELS, MODELS, WEIGHTS
from worker.metrics import LOOP_PHASES

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
REPO = Path(__file__).resolve().parent.parent


def pid_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def local_broker_pid(bootstrap: str) -> int | None:
    """The pid of the local broker (deploy/kafka-dev/kafka.sh) listening on
    ``bootstrap``'s port, from its pid file; None for any other broker (one elsewhere, or
    in a container), whose CPU this machine does not see."""
    port = bootstrap.rsplit(":", 1)[-1]
    home = Path(os.environ.get("KAFKA_DEV_HOME") or REPO / ".cache" / "kafka-dev")
    try:
        pid = int((home / f"run-{port}" / "kafka.pid").read_text())
        # A stale file's pid may have been reused: it must be the broker's java.
        if b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class Usage:
    """What a contestant's process and the local broker have used so far: the process's
    CPU seconds; its main thread's seconds on a core and ready to run but waiting for one
    (None where the kernel keeps no such figures); the broker's CPU seconds (None: not a
    local broker)."""

    cpu_s: float
    on_core_s: float | None
    waited_s: float | None
    broker_cpu_s: float | None


# Where free_port looks when the kernel does not say its ephemeral range: Linux's default.
EPHEMERAL = (32768, 60999)
# The lowest port free_port gives: above the local brokers' (9092, 19900 and their
# controllers) and the usual services'.
LOWEST_PORT = 20000


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return EPHEMERAL


def free_port(rng: random.Random | None = None) -> int:
    """A port on 127.0.0.1 nothing listens on, for a process started next to listen on.

    Not one the kernel gives out (``bind`` to port 0): that comes from the ephemeral
    range, from which every outgoing connection takes its local port too, so one of the
    many connections made before the process binds could take it (a test's third worker
    once failed "address already in use" so). A random port outside that range that
    binds now is one only another caller of this could pick."""
    rng = rng or random.Random()
    low, high = ephemeral_ports()
    # Below the ephemeral range; above it where the range starts too low for that.
    bottom, top = (LOWEST_PORT, low - 1) if low - 1 >= LOWEST_PORT else (high + 1, 65535)
    for _ in range(100):
        port = rng.randint(bottom, top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {bottom}-{top} after 100 tries")


# -- the worker process ----------------------------------------------------------------


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A worker config: the given sections, the benchmark's models and labels."""
    sections = {"fusion": {"strategy": "soft_vote", "labels": list(LABELS)}, **sections}
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml(v)}" for k, v in table.items()]
    for model, weight in zip(MODELS, WEIGHTS, strict=True):
        lines += ["[[models]]", f'name = "{model}"', f"weight = {weight}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def worker_sections(
    bootstrap: str,
    inputs: list[str],
    output: str,
    dlq: str,
    group: str,
    port: int,
    delivery: str = "at-least-once",
) -> dict[str, dict[str, Any]]:
    """The worker's configuration: the defaults but for the topics, group, delivery and
    metrics port."""
    return {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "input_topics": inputs,
            "output_topic": output,
            "dlq_topic": dlq,
            "delivery": delivery,
        },
        "metrics": {"host": "127.0.0.1", "port": port},
    }


class Process:
    """A process (the worker, the passthrough, a JVM contestant) with its CPU and memory:
    ``program`` (by default this Python interpreter) with the arguments ``argv``."""

    def __init__(self, argv: list[str], log: Path, program: str = sys.executable) -> None:
        self.argv = [program, *argv]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> Process:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as fh:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds so far."""
        return pid_cpu_s(self.pid)

    def schedstat(self) -> tuple[float, float] | None:
        """Seconds its main thread (the worker's event loop) spent on a core, and ready
        to run but waiting for one, so far (/proc/PID/schedstat), or None where the
        kernel keeps no such figures."""
        try:
            on_core, waited = Path(f"/proc/{self.pid}/schedstat").read_text().split()[:2]
            return int(on_core) / 1e9, int(waited) / 1e9
        except (OSError, ValueError):
            return None

    def waited_s(self) -> float | None:
        """Seconds its main thread was ready to run but waited for a core, so far."""
        stat = self.schedstat()
        return stat[1] if stat is not None else None

    def usage(self, broker_pid: int | None) -> Usage:
        """A snapshot of what it and the local broker (``broker_pid``) used so far."""
        stat = self.schedstat()
        broker: float | None = None
        if broker_pid is not None:
            with contextlib.suppress(OSError):
                broker = pid_cpu_s(broker_pid)
        return Usage(
            self.cpu_s(),
            stat[0] if stat is not None else None,
            stat[1] if stat is not None else None,
            broker,
        )

    def rss_bytes(self) -> int:
        pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return pages * PAGE

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not end in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class Profiler:
    """py-spy sampling a running process (``py-spy record --pid``), if it is installed;
    writes collapsed stacks (one ``frame;frame;... count`` line per stack)."""

    def __init__(self, pid: int, out: Path, rate_hz: int = 200) -> None:
        exe = Path(sys.executable).parent / "py-spy"
        self.proc: subprocess.Popen[bytes] | None = None
        if exe.exists():
            argv = [str(exe), "record", "--pid", str(pid), "--format", "raw"]
            argv += ["--rate", str(rate_hz), "--nonblocking", "-o", str(out)]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            print("py-spy is not installed: no profile", file=sys.stderr)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)


def worker_process(config: Path, log: Path) -> Process:
    return Process(["-m", "worker.cli", "run", "--config", str(config)], log)


def metric(port: int, name: str) -> float | None:
    """One sample of the worker's /metrics (the first line starting with ``name``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith((name + " ", name + "{")):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


def loop_seconds(port: int) -> dict[str, float]:
    """The worker's fusion_loop_seconds_total by phase (fetch, process, clients, commit)."""
    name = "fusion_loop_seconds_total"
    return {p: metric(port, f'{name}{{phase="{p}"}}') or 0.0 for p in LOOP_PHASES}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:  # refused, or a 503 (urllib's HTTPError is an OSError)
        return False


async def wait_ready(port: int, proc: Process, timeout_s: float = 60.0) -> None:
    """Until the worker's /readyz says it has partitions and a connection."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"worker exited:\n{proc.tail()}")
        if await asyncio.to_thread(ready, port):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"worker not ready within {timeout_s}s:\n{proc.tail()}")


@contextlib.asynccontextmanager
async def running_worker(
    bootstrap: str, topics: tuple[str, str, str], group: str, **sections: dict[str, Any]
) -> AsyncIterator[tuple[Process, int]]:
    """A worker process on ``topics`` (input, output, dead letters) in ``group``, with
    the extra config ``sections`` (one named like a default section replaces it), once
    its /readyz says it is ready; yields it and its metrics port, stops it on exit."""
    inp, out, dlq = topics
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        port = free_port()
        config = write_config(
            Path(tmp) / "worker.toml",
            worker_sections(bootstrap, [inp], out, dlq, group, port) | sections,
        )
        proc = worker_process(config, Path(tmp) / "worker.log").start()
        try:
            await wait_ready(port, proc)
            yield proc, port
        finally:
            proc.stop()


# -- the machine -----------------------------------------------------------------------


def _cpu_line() -> list[int]:
    """/proc/stat's first line: the machine's CPU ticks by kind (user, nice, system,
    idle, iowait, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return [int(f) for f in fields[:8]]


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (every core, every process: user,
    nice, system, irq, softirq, steal), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = _cpu_line()
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def machine_stolen_s() -> float:
    """CPU seconds the hypervisor gave to other guests while this machine had work to
    run (/proc/stat's steal). On a shared virtual machine it is a benchmark run's hidden
    variable: the more of it, the slower the same code (docs/benchmarks.md)."""
    return _cpu_line()[7] / CLOCK_TICKS


def machine() -> dict[str, str]:
    """Cores, RAM, CPU model, Python and library versions, for the report."""
    import aiokafka

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "orjson": orjson.__version__,
        "numpy": np.__version__,
        "os": platform.platform(),
    }
