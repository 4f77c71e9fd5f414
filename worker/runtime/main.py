"""`fusion-worker run`: the worker for the configured delivery mode, signals, exit codes.

Its own module so that the delivery modes (app.py, exactly_once.py) need not import
each other to pick one.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.errors import KafkaSetupError
from worker.runtime.app import Worker, tune_gc
from worker.runtime.exactly_once import ExactlyOnceWorker

log = logging.getLogger(__name__)


def run(config: Config) -> int:
    """The body of `fusion-worker run`."""
    return asyncio.run(_main(config))


def make_worker(config: Config, registry: CollectorRegistry | None = None) -> Worker:
    """The worker for the configured delivery mode."""
    if config.kafka.exactly_once:
        return ExactlyOnceWorker(config, registry)
    return Worker(config, registry)


async def _main(config: Config) -> int:
    worker = make_worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.start()
        tune_gc()
        await worker.run()
    except KafkaSetupError as exc:
        log.error("%s", exc)
        await worker.stop()
        return 1
    await worker.stop()
    return 0
