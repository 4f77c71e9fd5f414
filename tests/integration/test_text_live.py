"""Text fusion live on the real broker: text events in, fused text out, the same results
as `fusion-worker fuse` on the same events; invalid text events in the DLQ."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import count_ids
from tests.kafka_fixtures import consume, decode_values, produce
from worker.demo_text import sentences, simulate

pytestmark = pytest.mark.kafka

MODELS = ("ocr", "asr", "reorder", "mixed")
N_REQUESTS = 80
# Equal on both paths: everything but the times, which are the wall clock live and
# event time offline.
COMPARED = ("strategy", "status", "text", "chosen", "agreement", "members", "missing")
# Valid JSON, wrong for the text task, each keyed by its own request id.
BAD: list[tuple[str, dict[str, Any]]] = [
    ("text_type", {"request_id": "bad-1", "model": "ocr", "text": 42}),
    ("text_too_long", {"request_id": "bad-2", "model": "asr", "text": "x" * 2001}),
    ("text_empty", {"request_id": "bad-3", "model": "reorder", "text": " \n "}),
    ("label_mismatch", {"request_id": "bad-4", "model": "mixed", "label": "positive"}),
]


def fuse_offline(config: Path, events: Path, out: Path) -> list[dict[str, Any]]:
    """`fusion-worker fuse` as a user runs it, on the same events."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "fuse",
            "--config",
            str(config),
            "--input",
            str(events),
            "--output",
            str(out),
        ],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


@pytest.mark.parametrize("strategy", ["consensus", "text_vote"])
async def test_text_events_are_fused_live_as_fuse_fuses_them(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory, tmp_path: Path, strategy: str
) -> None:
    """4 simulated members x 80 real sentences on 3 partitions: each request is fused
    once, live, with the text, chosen member, agreement and members' similarities that
    `fusion-worker fuse` gives on the same events; bad text events go to the DLQ with
    their reason."""
    p: Pipeline = await pipeline(partitions=3)
    cfg = p.config(
        models=MODELS,
        labels=(),
        join={"timeout_ms": 60_000},
        fusion={"task": "text", "strategy": strategy, "max_text_chars": 2000},
    )
    events, _ = simulate(sentences()[:N_REQUESTS])
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    expected = {r["request_id"]: r for r in fuse_offline(cfg, path, tmp_path / "fused.jsonl")}
    assert len(expected) == N_REQUESTS

    worker = spawn_worker(cfg, p.port)
    worker.wait_ready()
    records = [(str(e["request_id"]).encode(), orjson.dumps(e)) for e in events]
    records += [(doc["request_id"].encode(), orjson.dumps(doc)) for _, doc in BAD]
    await produce(p.bootstrap, p.inputs[0], records)

    results = decode_values(await consume(p.bootstrap, p.output, N_REQUESTS, 90, idle_s=2))
    dead = await consume(p.bootstrap, p.dlq, len(BAD), timeout_s=30)

    assert sorted(count_ids(results).values()) == [1] * N_REQUESTS
    for r in results:
        want = expected[r["request_id"]]
        assert {k: r[k] for k in COMPARED} == {k: want[k] for k in COMPARED}, r["request_id"]
        assert r["status"] == "complete"
    reasons = {orjson.loads(d.value)["request_id"]: dict(d.headers)["error"] for d in dead}
    assert reasons == {doc["request_id"]: reason.encode() for reason, doc in BAD}
    assert worker.proc is not None
    assert worker.proc.poll() is None
