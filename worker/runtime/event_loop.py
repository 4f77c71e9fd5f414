"""The streaming worker's event loop: uvloop where it is installed, asyncio's own else.

Why uvloop: each step of the worker makes a fetch and a produce round trip with the
broker (exactly-once: a produce per partition's producer and the transactions' requests
as well), and below full load those round trips, not the events, are most of its CPU.
asyncio's default loop runs its selector, transports and timers in Python; uvloop runs
them in C on libuv. Measured in docs/benchmarks.md (twenty-sixth round). The loop does
not change what the worker computes: the step, its clock and its outputs are the same.

``[runtime] event_loop`` chooses it:

- ``auto`` (the default): uvloop where it can be imported (the package depends on it
  on Linux and macOS), else asyncio's own;
- ``uvloop``: uvloop, and a configuration error at start where it is missing;
- ``asyncio``: asyncio's own loop, e.g. to rule the loop out when chasing a problem.

``fusion-worker run`` takes it, and ``fusion-worker demo`` runs its worker on the
default's; the batch commands (replay, backtest, fuse) keep asyncio's loop, their time
is not in round trips.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: str) -> LoopFactory | None:
    """The ``loop_factory`` of ``asyncio.Runner`` for ``choice`` (a checked
    ``event_loop`` value); None is asyncio's own loop."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    import uvloop

    return uvloop.new_event_loop


def run_on(choice: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` gives."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What the start-up log line calls ``loop``."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
