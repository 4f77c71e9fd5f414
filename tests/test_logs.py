"""worker.logs: the level and format of the worker's log, aiokafka's records included."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from worker.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging configures the root logger: put back what pytest had."""
    root = logging.getLogger()
    aiokafka = logging.getLogger("aiokafka")
    saved = root.handlers[:], root.level, aiokafka.level
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    aiokafka.setLevel(saved[2])


@pytest.mark.parametrize("level", ["INFO", "WARNING", "ERROR"])
def test_aiokafka_follows_the_worker_level(level: str) -> None:
    """aiokafka's loggers are enabled exactly from the worker's [log] level up."""
    setup_logging(level, "text")
    want = logging.getLevelName(level)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.group_coordinator"):
        logger = logging.getLogger(name)
        assert logger.getEffectiveLevel() == want
        assert logger.isEnabledFor(want)
        assert not logger.isEnabledFor(want - 1)


def test_aiokafka_stays_at_info_when_the_worker_logs_debug() -> None:
    """At [log] level DEBUG the worker's own loggers log DEBUG, aiokafka's only INFO and
    up: its DEBUG records dump protocol requests, SASL PLAIN passwords included."""
    setup_logging("DEBUG", "text")
    assert logging.getLogger("worker.runtime.loop").isEnabledFor(logging.DEBUG)
    conn = logging.getLogger("aiokafka.conn")
    assert conn.isEnabledFor(logging.INFO)
    assert not conn.isEnabledFor(logging.DEBUG)


def test_aiokafka_level_set_elsewhere_is_undone() -> None:
    """A level left on the aiokafka logger (an earlier set-up, an embedding app) does not
    silence it: after setup_logging it follows the worker's level again."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    setup_logging("INFO", "text")
    assert logging.getLogger("aiokafka.conn").isEnabledFor(logging.INFO)


def test_aiokafka_warning_reaches_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    """An aiokafka warning is written to standard error, in the worker's JSON format."""
    setup_logging("WARNING", "json")
    logging.getLogger("aiokafka.conn").warning("Unable connect to %s", "node 1")
    logging.getLogger("aiokafka.conn").info("not at WARNING")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    doc = orjson.loads(lines[0])
    assert (doc["level"], doc["logger"], doc["message"]) == (
        "WARNING",
        "aiokafka.conn",
        "Unable connect to node 1",
    )
