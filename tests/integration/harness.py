"""Running the real worker as a process against the real broker, for integration tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import free_port
from tests.kafka_fixtures import KAFKA_SH, consume, wait_for_topics

LABELS = ("negative", "neutral", "positive")
MODELS = ("bert-base", "roberta", "distilbert")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(
    path: Path,
    *,
    bootstrap: str,
    inputs: Sequence[str],
    output: str,
    dlq: str,
    group: str,
    metrics_port: int,
    models: Sequence[str] = MODELS,
    weights: Sequence[float] | None = None,
    labels: Sequence[str] = LABELS,
    join: dict[str, Any] | None = None,
    kafka: dict[str, Any] | None = None,
    fusion: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
) -> Path:
    """A TOML config for one test: its own topics, group and metrics port."""
    kafka_table = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "input_topics": list(inputs),
        "output_topic": output,
        "dlq_topic": dlq,
        "commit_interval_ms": 200,
        **(kafka or {}),
    }
    lines = ["[kafka]", *(f"{k} = {toml_value(v)}" for k, v in kafka_table.items())]
    lines += ["[join]", *(f"{k} = {toml_value(v)}" for k, v in (join or {}).items())]
    fusion_table = {"strategy": "soft_vote", "labels": list(labels), **(fusion or {})}
    lines += ["[fusion]", *(f"{k} = {toml_value(v)}" for k, v in fusion_table.items())]
    for i, m in enumerate(models):
        w = 1.0 if weights is None else weights[i]
        lines += ["[[models]]", f'name = "{m}"', f"weight = {w}"]
    lines += ["[metrics]", 'host = "127.0.0.1"', f"port = {metrics_port}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (metrics or {}).items()]
    if runtime:  # last only when given: some tests append keys to [metrics]
        lines += ["[runtime]", *(f"{k} = {toml_value(v)}" for k, v in runtime.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_events(
    n: int,
    models: Sequence[str] = MODELS,
    labels: Sequence[str] = LABELS,
    seed: int = 1,
    prefix: str = "r",
    skip: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Prediction events for ``n`` requests from every model (random probabilities,
    fixed seed); ``skip`` gives a model's probability of staying silent."""
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    ts = 1_700_000_000_000
    for i in range(n):
        for m in models:
            if skip and rng.random() < skip.get(m, 0.0):
                continue
            probs = rng.dirichlet(np.ones(len(labels))).tolist()
            out.append(
                {"request_id": f"{prefix}-{i:06d}", "model": m, "ts": ts + i, "probs": probs}
            )
    return out


class WorkerProcess:
    """`fusion-worker run` in a subprocess; logs go to a file for the failure message."""

    def __init__(self, config: Path, metrics_port: int, log: Path) -> None:
        self.config = config
        self.port = metrics_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "run", "--config", str(self.config)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.logs()}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout_s}s:\n{self.logs()}")

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""


def count_ids(results: Sequence[dict[str, Any]]) -> Counter[str]:
    return Counter(r["request_id"] for r in results)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class PrivateBroker:
    """A second local broker on its own ports, which a test may stop and start; its
    data survives down/up (a real restart) and is deleted by ``reset``."""

    def __init__(self) -> None:
        self._pick_ports()

    def _pick_ports(self) -> None:
        self.port = free_port()
        while not _port_free(self.port + 1):
            self.port = free_port()
        self.env = {**os.environ, "KAFKA_PORT": str(self.port)}
        self.bootstrap = f"127.0.0.1:{self.port}"

    def other_port(self) -> int:
        """A free port for an extra listener, never this broker's client port or its
        controller's (port + 1), which nothing holds until the broker binds it."""
        port = free_port()
        while port in (self.port, self.port + 1):
            port = free_port()
        return port

    def start(self, attempts: int = 3) -> None:
        """``up`` on free ports; other processes may take a port between our check and
        the broker's bind, so a failed first start moves to new ports."""
        for attempt in range(attempts):
            try:
                self.run("up")
                return
            except AssertionError:
                self.run("reset")
                if attempt == attempts - 1:
                    raise
                self._pick_ports()

    async def pipeline(
        self, tmp_path: Path, group: str, partitions: int, **kw: Any
    ) -> tuple[Path, int]:
        """Topics ``in``, ``out`` and ``dlq`` on this broker and a worker config for them
        (``kw`` as ``write_config`` takes it); returns the config and its metrics port."""
        await create_topics_on(self.bootstrap, ["in", "out", "dlq"], partitions)
        port = free_port()
        config = write_config(
            tmp_path / f"{group}.toml",
            bootstrap=self.bootstrap,
            inputs=["in"],
            output="out",
            dlq="dlq",
            group=group,
            metrics_port=port,
            **kw,
        )
        return config, port

    def run(self, command: str) -> None:
        done = subprocess.run([str(KAFKA_SH), command], env=self.env, capture_output=True)
        if done.returncode != 0:
            raise AssertionError(
                f"kafka.sh {command} on port {self.port} failed:\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
            )


async def create_topics_on(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        await wait_for_topics(admin, names)
    finally:
        await admin.close()


EOS: dict[str, Any] = {"delivery": "exactly-once"}


async def read_committed(bootstrap: str, topic: str, n: int, timeout_s: float = 120) -> list[Any]:
    """``n`` records of ``topic`` as a read_committed consumer sees them."""
    return await consume(
        bootstrap, topic, n, timeout_s=timeout_s, isolation_level="read_committed", idle_s=3
    )


async def wait_committed(
    bootstrap: str, group: str, topic: str, n: int, worker: WorkerProcess, timeout_s: float = 30
) -> None:
    """Until ``group`` has committed ``n`` of ``topic``'s records, over its partitions.

    Under exactly-once the offsets commit in the changelog's transaction: a worker
    killed after this left every one of those records in its changelog, and a restarted
    one consumes none of them again. Every request in the changelog is not enough: a
    request's later member may still be uncommitted."""
    deadline = time.monotonic() + timeout_s
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            offsets = await admin.list_consumer_group_offsets(group)
            if sum(max(o.offset, 0) for tp, o in offsets.items() if tp.topic == topic) >= n:
                return
            assert time.monotonic() < deadline, worker.logs()
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (in /metrics ``text``) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
