"""At most one job in the background: the at-least-once commit that does not hold the
loop (worker/runtime/at_least_once.py).

The loop starts a job (``start``) and goes on fetching; before each fetch it asks
whether a job ended with an error (``check``), and before anything that must not
overlap a job (the next commit on the loop, a rebalance, the shutdown) it waits for it
(``wait``). A job handles the errors it can live with itself; what it raises (a fatal
error) stays: ``check`` raises it on the loop from then on, also after a wait inside a
rebalance callback, where aiokafka would swallow it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class InFlight:
    """One background job at a time, its error handed back to the loop."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Whether a job is still running."""
        return self._task is not None and not self._task.done()

    def start(self, job: Coroutine[Any, Any, None]) -> None:
        """Run ``job`` in the background; one at a time (``busy`` says when not)."""
        if self.busy:
            job.close()
            raise RuntimeError("a background job is still running")
        self._task = asyncio.ensure_future(job)

    def check(self) -> None:
        """Raise the error a job ended with, if one did (every time: it is fatal)."""
        task = self._task
        if task is not None and task.done():
            self._task = None
            if not task.cancelled() and task.exception() is not None:
                self._error = task.exception()
        if self._error is not None:
            raise self._error

    async def wait(self) -> None:
        """Wait until the job has ended (its error is for ``check``). Cancelling the
        caller cancels the job too: a commit not made is safe, its records are read
        again."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def cancel(self) -> None:
        """End the job now, whatever it was doing (the worker is going)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not log it as lost
