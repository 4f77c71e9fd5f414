"""The at-least-once worker with ``[join] early_decision`` honoured, for bench_early.

The streaming runtime builds its join tables itself and does not pass them a decider
yet (the runtime is being rebuilt around a shared engine step; the wiring goes there:
``JoinTable(..., decider=EarlyDecider.from_fuser(fuser, min_models, prob_tolerance))``
when ``config.join.early_decision``). Until then this launcher runs the very same
``Worker`` with only its table factory extended, so the benchmark measures the real
loop, fetch, join, fusion and sink.

    python -m bench.early_worker --config worker.toml
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from worker.config import Config, load_config
from worker.fusion.early import EarlyDecider
from worker.join import JoinTable
from worker.runtime.app import Worker, tune_gc


class EarlyWorker(Worker):
    """``Worker`` whose join tables decide early when the configuration says so."""

    def _new_table(self) -> JoinTable:
        j = self.config.join
        decider = None
        if j.early_decision:
            decider = EarlyDecider.from_fuser(
                self._fuser, j.min_models, self.config.fusion.prob_tolerance
            )
        return JoinTable(
            self.config.model_names,
            j.timeout_ms,
            j.fused_memory_effective_ms,
            j.fused_memory_count,
            decider=decider,
        )


async def _main(config: Config) -> int:
    worker = EarlyWorker(config)
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
    return asyncio.run(_main(load_config(args.config)))


if __name__ == "__main__":
    sys.exit(main())
