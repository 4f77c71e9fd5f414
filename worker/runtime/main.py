"""`fusion-worker run`: the loop with the configured delivery mode, signals, exit codes.

Its own module so that the delivery modes (at_least_once.py, exactly_once.py) and the
loop need not import each other: this is where one is composed into the other.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from prometheus_client import CollectorRegistry

from worker.config import Config
from worker.errors import KafkaSetupError
from worker.runtime.at_least_once import AtLeastOnce
from worker.runtime.event_loop import loop_name, run_on
from worker.runtime.exactly_once import ExactlyOnce
from worker.runtime.loop import Loop

log = logging.getLogger(__name__)

# The cyclic garbage collector's thresholds once running (see tune_gc).
GC_THRESHOLDS = (50_000, 20, 100)


def run(config: Config) -> int:
    """The body of `fusion-worker run`, on the configured event loop."""
    return run_on(config.runtime.event_loop, _main(config))


def make_worker(config: Config, registry: CollectorRegistry | None = None) -> Loop:
    """The loop with the configured delivery mode composed into it."""
    if config.kafka.exactly_once:
        return Loop(config, ExactlyOnce, registry)
    return Loop(config, AtLeastOnce, registry)


async def _main(config: Config) -> int:
    worker = make_worker(config)
    loop = asyncio.get_running_loop()
    log.info("event loop %s", loop_name(loop))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.start()
        tune_gc()
        await worker.run()
    except KafkaSetupError as exc:
        worker.health.set_failed(str(exc))
        await worker.stop()
        # Last, so that it is the line an operator reads first.
        log.error("%s", exc)
        return 1
    await worker.stop()
    return 0


def tune_gc() -> None:
    """After start-up: put what start-up built (modules, config, clients) out of the
    cyclic collector's sight, and collect young objects less often.

    The hot path allocates a dozen containers per result, nearly all freed at once by
    reference counting; with the default threshold (700) the collector kept walking them
    for nothing, about a fifth of the worker's CPU (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
