"""Fixtures for tests that run the worker process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import PrivateBroker, WorkerProcess, free_port, write_config
from tests.kafka_fixtures import TopicFactory, unique

WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def private_broker() -> Iterator[PrivateBroker]:
    """A broker of the test's own, which it may stop and start; deleted afterwards."""
    broker = PrivateBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.run("reset")


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Start worker processes from a config path; every one is killed at teardown."""
    started: list[WorkerProcess] = []

    def factory(config: Path, port: int, name: str = "worker") -> WorkerProcess:
        w = WorkerProcess(config, port, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(w)
        return w

    yield factory
    for w in started:
        w.stop_quietly()


class Pipeline:
    """Fresh topics and a config for one test."""

    def __init__(
        self, tmp_path: Path, bootstrap: str, inputs: list[str], out: str, dlq: str
    ) -> None:
        self.tmp_path = tmp_path
        self.bootstrap = bootstrap
        self.inputs = inputs
        self.output = out
        self.dlq = dlq
        self.group = unique("group")
        self.port = free_port()

    def config(self, name: str = "fusion.toml", port: int | None = None, **kw: Any) -> Path:
        return write_config(
            self.tmp_path / name,
            bootstrap=self.bootstrap,
            inputs=self.inputs,
            output=self.output,
            dlq=self.dlq,
            group=self.group,
            metrics_port=port or self.port,
            **kw,
        )


@pytest.fixture
def pipeline(tmp_path: Path, kafka_bootstrap: str, make_topics: TopicFactory) -> Callable[..., Any]:
    async def factory(partitions: int = 4, inputs: int = 1) -> Pipeline:
        ins = await make_topics(partitions, count=inputs, prefix="in")
        out, dlq = await make_topics(partitions, count=2, prefix="out")
        return Pipeline(tmp_path, kafka_bootstrap, ins, out, dlq)

    return factory
