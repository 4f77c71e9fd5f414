"""The streaming worker's event loop (worker/runtime/event_loop.py): which loop
``[runtime] event_loop`` gives ``fusion-worker run``, and the refusal of a missing one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from worker.config import Config, build_config
from worker.errors import ConfigError
from worker.runtime import event_loop, main


def config(**runtime: Any) -> Config:
    return build_config(
        {
            "fusion": {"labels": ["a", "b"]},
            "models": [{"name": "m1"}],
            "runtime": runtime,
        }
    )


def loop_run_on(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> str:
    """The loop ``main.run`` drives the worker's coroutine on, by name."""
    seen: list[str] = []

    async def fake_main(_: Config) -> int:
        seen.append(event_loop.loop_name(asyncio.get_running_loop()))
        return 0

    monkeypatch.setattr(main, "_main", fake_main)
    assert main.run(cfg) == 0
    return seen[0]


def test_the_default_is_auto() -> None:
    """Without the key the choice is ``auto``."""
    assert config().runtime.event_loop == "auto"


def test_run_uses_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` with uvloop installed: the worker runs on uvloop."""
    assert loop_run_on(config(), monkeypatch) == "uvloop"


def test_run_uses_asyncio_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncio``: the worker runs on asyncio's own loop although uvloop is there."""
    assert loop_run_on(config(event_loop="asyncio"), monkeypatch) == "asyncio"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` where uvloop cannot be imported: asyncio's own loop, no error."""
    monkeypatch.setattr(event_loop, "uvloop_installed", lambda: False)
    assert event_loop.loop_factory("auto") is None
    assert loop_run_on(config(), monkeypatch) == "asyncio"


def test_uvloop_is_uvloops_factory() -> None:
    """``uvloop`` and ``auto`` (installed) give uvloop's own loop factory."""
    assert event_loop.loop_factory("uvloop") is uvloop.new_event_loop
    assert event_loop.loop_factory("auto") is uvloop.new_event_loop


def test_uvloop_asked_but_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uvloop`` where it is not installed stops at load, naming the key and value."""
    monkeypatch.setattr("worker.config_checks.uvloop_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        config(event_loop="uvloop")
    assert (info.value.key, info.value.value) == ("runtime.event_loop", "uvloop")
    assert "not installed" in info.value.problem
