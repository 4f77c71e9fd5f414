"""``python -m worker.demo_langid demo``: four language identifiers as model services,
the streaming worker fusing them (soft vote), and a gateway awaiting each fused answer.

Fresh topics on the given broker; the worker runs as its own process (``fusion-worker
run``); the services run as tasks of this process; the gateway sends spaCy's example
sentences (``corpus``) as texts and awaits each fused result with ``FusedResults``.
Prints each answer and the accuracy of the fused label and of each identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.client import FusedResults
from worker.demo_langid import corpus
from worker.demo_langid.identifiers import IDENTIFIERS, UNDETERMINED, Identifier, build
from worker.demo_langid.languages import LABEL_MAPS, LANGUAGES
from worker.demo_langid.service import serve

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What the demo measured: per request the true and fused labels, per identifier its
    top label (from the fused result's members, in fused labels): ``und`` when it reported
    but abstained (no mass on a fused label), None when it did not report."""

    truth: list[str] = field(default_factory=list)
    fused: list[str | None] = field(default_factory=list)
    members: dict[str, list[str | None]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    def accuracy(self, predicted: Sequence[str | None]) -> float:
        hits = sum(p == t for p, t in zip(predicted, self.truth, strict=True))
        return hits / len(self.truth) if self.truth else 0.0

    def add(self, truth: str, result: dict[str, Any]) -> None:
        self.truth.append(truth)
        self.fused.append(result.get("label"))
        status = str(result.get("status"))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        members = result.get("members") or {}
        for name in IDENTIFIERS:
            member = members.get(name)
            label = None if member is None else (member.get("label") or UNDETERMINED)
            self.members.setdefault(name, []).append(label)


def _toml_strings(values: Iterable[str]) -> str:
    # JSON strings of these ASCII codes are TOML basic strings.
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def models_toml(identifiers: Sequence[Identifier], labels: Sequence[str] = LANGUAGES) -> list[str]:
    """The ``[fusion] labels`` and ``[[models]]`` lines of the identifiers: each with its
    own codes (``labels``) and the map of those that differ from the fused labels
    (``label_map``, from ``languages.LABEL_MAPS``, for the fused labels only: a code
    of a language not fused is one the model has and the fusion ignores); equal weights."""
    lines = [f"labels = {_toml_strings(labels)}"]
    fused = set(labels)
    for ident in identifiers:
        mapping = ", ".join(
            f"{json.dumps(code)} = {json.dumps(label)}"
            for code, label in LABEL_MAPS[ident.name].items()
            if label in fused
        )
        lines += [
            "[[models]]",
            f"name = {json.dumps(ident.name)}",
            "weight = 1.0",
            f"labels = {_toml_strings(ident.codes)}",
            f"label_map = {{ {mapping} }}",
        ]
    return lines


def worker_config(
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    metrics_port: int,
    timeout_ms: int,
    identifiers: Sequence[Identifier],
) -> str:
    """The TOML configuration of the demo's worker: the four identifiers, equal weights."""
    lines = [
        "[kafka]",
        f'bootstrap_servers = "{bootstrap}"',
        f'group_id = "{group}"',
        f'input_topics = ["{topics["predictions"]}"]',
        f'output_topic = "{topics["fused"]}"',
        f'dlq_topic = "{topics["dlq"]}"',
        "commit_interval_ms = 200",
        "[join]",
        f"timeout_ms = {timeout_ms}",
        "min_models = 1",
        "[metrics]",
        'host = "127.0.0.1"',
        f"port = {metrics_port}",
        "[fusion]",
        'strategy = "soft_vote"',
        *models_toml(identifiers),
    ]
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_ready(proc: asyncio.subprocess.Process, port: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            status = await asyncio.to_thread(_status, f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"the worker was not ready within {timeout_s} s")


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def run(
    bootstrap: str,
    *,
    per_language: int | None = None,
    partitions: int = 2,
    timeout_ms: int = 3000,
    answer_timeout_s: float = 60.0,
    show: bool = True,
    summary: bool = True,
    log_path: Path | None = None,
) -> Report:
    """The whole demo on a running broker; returns what it measured. ``show``: print each
    answer; ``summary``: print the accuracies."""
    sentences = corpus.load(per_language=per_language)
    run_id = uuid.uuid4().hex[:8]
    topics = {k: f"langid-{k}-{run_id}" for k in ("texts", "predictions", "fused", "dlq")}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    stop = asyncio.Event()
    proc: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[int]] = []
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics.values()])
        port = _free_port()
        workdir = Path(tempfile.mkdtemp(prefix="langid-demo-"))
        identifiers = [build(name) for name in IDENTIFIERS]
        config = workdir / "fusion.toml"
        config.write_text(
            worker_config(bootstrap, topics, f"langid-{run_id}", port, timeout_ms, identifiers),
            "utf-8",
        )
        with (log_path or workdir / "worker.log").open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker.cli", "run", "--config", str(config),
                stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        await _wait_ready(proc, port, timeout_s=60.0)
        tasks = [
            asyncio.create_task(
                serve(
                    ident,
                    bootstrap,
                    topics["texts"],
                    topics["predictions"],
                    group_id=f"langid-{ident.name}-{run_id}",
                    stop=stop,
                )
            )
            for ident in identifiers
        ]
        report = Report()
        async with FusedResults(bootstrap, topics["fused"]) as results:
            ids = [f"s-{i:04d}" for i in range(len(sentences))]
            waiting = [
                asyncio.create_task(results.get(rid, timeout_s=answer_timeout_s)) for rid in ids
            ]
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
            await producer.start()
            try:
                for rid, sentence in zip(ids, sentences, strict=True):
                    value = orjson.dumps({"request_id": rid, "text": sentence.text})
                    await producer.send(topics["texts"], value, key=rid.encode())
                await producer.flush()
            finally:
                await producer.stop()
            for sentence, answer in zip(sentences, waiting, strict=True):
                result = await answer
                report.add(sentence.language, result)
                if show:
                    _print_answer(sentence, result)
        if summary:
            print_summary(report)
        return report
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await task
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(Exception):
            await admin.delete_topics(list(topics.values()))
        await admin.close()


def _print_answer(sentence: corpus.Sentence, result: dict[str, Any]) -> None:
    members = result.get("members") or {}
    own = " ".join(
        f"{name}={'-' if name not in members else members[name]['label'] or UNDETERMINED}"
        for name in IDENTIFIERS
    )
    mark = "ok " if result.get("label") == sentence.language else "XX "
    text = sentence.text if len(sentence.text) <= 40 else sentence.text[:37] + "..."
    print(
        f"{mark}{result['request_id']} true={sentence.language} fused={result.get('label')} "
        f"({result.get('confidence', 0):.2f}) {own}  {text}"
    )


def print_summary(report: Report) -> None:
    n = len(report.truth)
    print(f"\n{n} sentences, {len(set(report.truth))} languages; statuses {report.statuses}")
    print(f"  fused (soft vote)  accuracy {report.accuracy(report.fused):.3f}")
    for name, labels in report.members.items():
        print(f"  {name:<18} accuracy {report.accuracy(labels):.3f}")
