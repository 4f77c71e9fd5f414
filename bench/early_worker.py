"""The streaming worker with ``[join] early_decision`` honoured, for bench_early.

The engine builds its join tables with the early decider when the configuration asks
for it, so this launcher runs the worker ``fusion-worker run`` runs (the loop with the
configured delivery), and the benchmark measures the real fetch, join, fusion and sink.

    python -m bench.early_worker --config worker.toml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from worker.config import Config, load_config
from worker.runtime.event_loop import run_on
from worker.runtime.main import make_worker, tune_gc


async def _main(config: Config) -> int:
    worker = make_worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.start()
    tune_gc()
    await worker.run()
    await worker.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(args.config)
    return run_on(config.runtime.event_loop, _main(config))


if __name__ == "__main__":
    sys.exit(main())
