"""The `fusion-worker` command line: parse arguments, load the config, hand over.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
Each subcommand imports its module lazily so that `fusion-worker check` does not pay
for scikit-learn and `fuse` does not pay for aiokafka.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from worker._version import __version__
from worker.config import Config, load_config
from worker.errors import ConfigError, FusionError
from worker.logs import setup_logging

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fusion-worker",
        description="Fuse the predictions of many models per request from Kafka.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", type=Path, required=True, help="the TOML configuration")
        return sp

    with_config("run", "the streaming worker")
    with_config("check", "validate the config, connect, check topics and co-partitioning")

    sp = with_config("fuse", "fuse prediction events from a JSON Lines file (event-time clock)")
    sp.add_argument("--input", "-i", type=Path, required=True)
    sp.add_argument("--output", "-o", type=Path, help="default: standard output")
    sp.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="assign events to this many partitions by murmur2(request_id), as a topic would",
    )
    sp.add_argument(
        "--dlq", type=Path, help="write invalid lines here (JSON Lines with the reason)"
    )
    sp.add_argument(
        "--labels",
        type=Path,
        help="label events (JSON Lines: request_id, label | score, ts) to learn from, by ts",
    )

    sp = with_config("replay", "fuse a range of the input topics again (event-time clock)")
    sp.add_argument(
        "--from", dest="start", required=True, help="earliest | latest | offset:N | ISO 8601"
    )
    sp.add_argument("--to", dest="end", required=True, help="exclusive; same syntax")
    out = sp.add_mutually_exclusive_group()
    out.add_argument("--output", "-o", type=Path)
    out.add_argument("--topic", help="publish results here, keyed by request_id")
    sp.add_argument("--strategy", type=_strategies, help="several, comma-separated, in one pass")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    sp.add_argument(
        "--labels", type=Path, help="label events (JSON Lines) to learn from, by event time"
    )

    sp = with_config("backtest", "score members and strategies on labelled history")
    sp.add_argument("--predictions", required=True, help="JSON Lines file or TOPIC@FROM..TO")
    sp.add_argument(
        "--labels",
        required=True,
        help="JSON Lines file or TOPIC@FROM..TO; with adaptive weights, a file with ts "
        "also runs <strategy>+adaptive, learning from it on event time",
    )
    sp.add_argument("--strategy", type=_strategies)
    sp.add_argument("--report", type=Path, help="write DIR/index.html with PNG plots")
    sp.add_argument(
        "--fit", action="store_true", help="time split: fit on the earlier part, score the later"
    )
    sp.add_argument("--train-share", type=float, default=0.6)
    sp.add_argument("--fit-dir", type=Path)
    sp.add_argument("--bootstrap", type=int, default=0, help="resamples for winner vs best member")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    sp = with_config(
        "fit", "train a stacker, learned weights or member temperatures on labelled history"
    )
    sp.add_argument("--predictions", type=Path, required=True, help="prediction events, JSON Lines")
    sp.add_argument("--labels", type=Path, required=True, help='{"request_id", "label"} JSON Lines')
    sp.add_argument("--out", type=Path, required=True, help="the artefact to write (JSON)")
    sp.add_argument("--method", choices=["stacking", "weights", "calibration"], default="stacking")

    sp = with_config("simulate", "simulated models publishing prediction events (for demos)")
    sp.add_argument("--rate", type=float, default=50.0, help="requests per second")
    sp.add_argument("--requests", type=int, default=0, help="stop after this many (0: forever)")
    sp.add_argument("--seed", type=int, default=7)

    sp = sub.add_parser("demo", help="local broker, simulated models, live fused output")
    sp.add_argument("--requests", type=int, default=300)
    sp.add_argument("--rate", type=float, default=100.0)
    return p


def _strategies(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            setup_logging("WARNING", "text")
            from worker.demo import run_demo

            return run_demo(requests=args.requests, rate=args.rate)
        config = load_config(args.config)
        setup_logging(config.log.level, config.log.format)
        return _dispatch(args, config)
    except ConfigError as exc:
        print(f"fusion-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except FusionError as exc:
        print(f"fusion-worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "run":
        from worker.runtime.main import run

        return run(config)
    if args.command == "check":
        from worker.runtime.check import run_check

        return run_check(config)
    if args.command == "fuse":
        from worker.offline import run_fuse

        if args.partitions < 1:
            raise ConfigError("--partitions", args.partitions, "must be >= 1")
        return run_fuse(
            config,
            args.input,
            args.output,
            partitions=args.partitions,
            dlq=args.dlq,
            labels=args.labels,
        )
    if args.command == "replay":
        from worker.replay import run_replay

        return run_replay(
            config,
            args.start,
            args.end,
            args.output,
            args.topic,
            args.strategy,
            args.progress,
            args.labels,
        )
    if args.command == "backtest":
        from worker.backtest import run_backtest

        return run_backtest(
            config,
            args.predictions,
            args.labels,
            args.strategy,
            args.report,
            args.fit,
            args.train_share,
            args.fit_dir,
            args.bootstrap,
            args.progress,
        )
    if args.command == "fit":
        from worker.fusion.fit import run_fit

        return run_fit(config, args.predictions, args.labels, args.out, method=args.method)
    if args.command == "simulate":
        from worker.simulate import run_simulate

        return run_simulate(config, rate=args.rate, requests=args.requests, seed=args.seed)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
