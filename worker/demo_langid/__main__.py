"""Command line of the language-identification demo.

    python -m worker.demo_langid serve --identifier py3langid --bootstrap HOST:PORT \
        --texts texts --predictions predictions
    python -m worker.demo_langid demo --bootstrap HOST:PORT [--per-language N]
    python -m worker.demo_langid backtest-data --out DIR [--per-language N] [--wide]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.demo_langid.identifiers import IDENTIFIERS, build


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker.demo_langid")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one identifier as a model service")
    serve.add_argument("--identifier", required=True, choices=sorted(IDENTIFIERS))
    serve.add_argument("--bootstrap", default="127.0.0.1:9092")
    serve.add_argument("--texts", default="texts", help="topic of the texts to identify")
    serve.add_argument("--predictions", default="predictions", help="the worker's input topic")
    serve.add_argument("--group", default=None, help="consumer group (langid-<identifier>)")
    demo = sub.add_parser("demo", help="services, worker and gateway on fresh topics")
    demo.add_argument("--bootstrap", default="127.0.0.1:9092")
    demo.add_argument("--per-language", type=int, default=None, help="sentences per language")
    demo.add_argument("--quiet", action="store_true", help="print only the accuracies")
    data = sub.add_parser(
        "backtest-data", help="predictions, labels and config for fusion-worker backtest"
    )
    data.add_argument("--out", required=True, type=Path, help="directory to write into")
    data.add_argument("--per-language", type=int, default=None, help="sentences per language")
    data.add_argument(
        "--wide",
        action="store_true",
        help="every language of the examples that one identifier names (partial coverage)",
    )
    data.add_argument(
        "--min-per-language",
        type=int,
        default=1,
        help="only the languages with at least this many sentences (for backtest --fit)",
    )
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from worker.demo_langid.service import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    published = await serve(
        build(args.identifier),
        args.bootstrap,
        args.texts,
        args.predictions,
        group_id=args.group,
        stop=stop,
    )
    logging.getLogger(__name__).info("published %d predictions", published)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from worker.demo_langid.demo import run

    await run(args.bootstrap, per_language=args.per_language, show=not args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # The Kafka client logs every group join at INFO; the demo's own output is the point.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    if args.command == "serve":
        return asyncio.run(_serve(args))
    if args.command == "backtest-data":
        from worker.demo_langid.backtest import write

        count = write(
            args.out,
            per_language=args.per_language,
            wide=args.wide,
            min_per_language=args.min_per_language,
        )
        print(f"{count} sentences: {args.out}/predictions.jsonl, labels.jsonl, fusion.toml")
        return 0
    return asyncio.run(_demo(args))


if __name__ == "__main__":
    sys.exit(main())
