"""Input topologies on the real broker: inputs that are not co-partitioned are refused at
start; one input topic per model, co-partitioned, is fused exactly once by a group."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chaos import reference
from tests.integration.conftest import Pipeline, WorkerFactory
from tests.integration.harness import count_ids, free_port, make_events, metric, write_config
from tests.kafka_fixtures import TopicFactory, consume, decode_values, produce_json

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("command", ["check", "run"])
async def test_inputs_with_different_partition_counts_are_refused(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path, command: str
) -> None:
    """`check` and `run` exit with code 1 when the input topics have 2 and 3 partitions,
    saying they are not co-partitioned and naming each topic with its count; `run`
    publishes nothing."""
    (two,) = await make_topics(2, prefix="in2")
    (three,) = await make_topics(3, prefix="in3")
    out, dlq = await make_topics(2, count=2, prefix="out")
    await produce_json(kafka_bootstrap, two, make_events(5, seed=41))
    cfg = write_config(
        tmp_path / "fusion.toml",
        bootstrap=kafka_bootstrap,
        inputs=[two, three],
        output=out,
        dlq=dlq,
        group=f"group-{two}",
        metrics_port=free_port(),
    )

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", command, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "not co-partitioned" in done.stderr
    assert f"'{two}': 2" in done.stderr
    assert f"'{three}': 3" in done.stderr
    assert await consume(kafka_bootstrap, out, 1, timeout_s=2) == []


@pytest.mark.parametrize(("outputs", "expected"), [(2, "read-back: on"), (3, "read-back: off")])
async def test_check_says_whether_the_output_is_read_back(
    kafka_bootstrap: str, make_topics: TopicFactory, tmp_path: Path, outputs: int, expected: str
) -> None:
    """At-least-once reads its output back at assignment only when the output topic is
    co-partitioned with the inputs: `check` says which, naming the counts when off."""
    (inp,) = await make_topics(2, prefix="in")
    (out,) = await make_topics(outputs, prefix="out")
    (dlq,) = await make_topics(2, prefix="dlq")
    cfg = write_config(
        tmp_path / "fusion.toml",
        bootstrap=kafka_bootstrap,
        inputs=[inp],
        output=out,
        dlq=dlq,
        group=f"group-{inp}",
        metrics_port=free_port(),
    )

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout
    if outputs != 2:
        assert f"{out} has 3 partitions, the inputs 2" in done.stdout


MODELS2 = ("bert-base", "roberta")


@pytest.mark.slow
async def test_topic_per_model_with_two_workers_fuses_each_request_once(
    pipeline: Callable[..., Any], spawn_worker: WorkerFactory
) -> None:
    """Two input topics (one per model, 4 partitions each) and two workers in one group:
    once the group is stable, both workers own partitions, every one of 2,000 requests
    is fused exactly once, complete (both events of a request reach one worker), with
    the engine's values; each worker fused a share."""
    p: Pipeline = await pipeline(partitions=4, inputs=2)
    # A deadline well above the production time: a partial result can only mean the
    # events of one request went to different workers.
    setup: dict[str, Any] = {"models": MODELS2, "weights": [0.4, 0.6], "join": {"timeout_ms": 5000}}
    cfg_a = p.config("a.toml", **setup)
    port_b = free_port()
    cfg_b = p.config("b.toml", port=port_b, **setup)
    a = spawn_worker(cfg_a, p.port, "a")
    b = spawn_worker(cfg_b, port_b, "b")
    a.wait_ready()
    b.wait_ready()
    await asyncio.sleep(2)  # let the second join settle: both own partitions
    assert a.get("/readyz")[0] == 200
    assert b.get("/readyz")[0] == 200

    events = make_events(2000, models=MODELS2, seed=42)
    # Both topics at once: a request's second event must come within its deadline.
    await asyncio.gather(
        *(
            produce_json(p.bootstrap, topic, [e for e in events if e["model"] == model])
            for topic, model in zip(p.inputs, MODELS2, strict=True)
        )
    )
    results = decode_values(await consume(p.bootstrap, p.output, 2000, timeout_s=60, idle_s=2))

    ids = count_ids(results)
    assert len(ids) == 2000
    assert Counter(ids.values()) == Counter({1: 2000})
    assert Counter(r["status"] for r in results) == Counter({"complete": 2000})
    expected = reference(cfg_a, events)
    for r in results:
        want = expected[r["request_id"]]
        assert r["label"] == want["label"]
        assert all(
            math.isclose(x, y, abs_tol=1e-12)
            for x, y in zip(r["probs"], want["probs"], strict=True)
        )
    shares = [
        metric(w.get("/metrics")[1], "fusion_results_total", status="complete") for w in (a, b)
    ]
    assert sum(shares) == 2000
    assert min(shares) > 0, shares
