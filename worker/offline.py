"""The offline driver: the engine step of the streaming worker (worker/engine.py), over
records read from a file or a replayed topic range, on the event-time clock.

``fuse_records`` serves ``replay`` and ``backtest``; ``run_fuse`` is the body of
``fusion-worker fuse`` (JSON Lines in, JSON Lines out).

Clock (DESIGN.md, "Join semantics"): one join table per partition number; its stream
time is the largest event ts seen on that partition so far. Before an event joins, every
request of its partition whose deadline (first event's ts + timeout_ms) is <= the stream
time closes, so an event at or after its request's deadline is late; a request opened by
an event already past its deadline closes at once. At the end of the input every pending
request closes (expired) at its partition's final stream time, partitions in ascending
order. The output depends only on the input's content and order: the same file gives
byte-identical output.

Invalid input is never dropped silently: ``fuse_records`` hands each invalid record to
``on_invalid`` (or logs it and warns with the counts at the end); ``run_fuse`` writes
invalid lines to ``--dlq`` or reports them on standard error.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import orjson

from worker.config import Config
from worker.engine import BatchFuser, Engine, InRecord, Step
from worker.errors import ConfigError, FusionError, InvalidEvent
from worker.fusion import Fuser

log = logging.getLogger(__name__)

# Records go to the engine in steps of this many; what closes in a step is fused as one
# batch (the fusion is vectorised). Any step size gives the same results.
FUSE_BATCH = 4096

__all__ = ["FUSE_BATCH", "BatchFuser", "fuse_records", "run_fuse"]

OnInvalid = Callable[[int, bytes | None, InvalidEvent], None]


def _steps(
    engine: Engine, records: Iterable[InRecord], on_invalid: OnInvalid | None
) -> Iterator[dict[str, Any]]:
    """Drive ``engine`` over ``records`` in steps of FUSE_BATCH records, then finish."""
    chunk: list[InRecord] = []
    outcomes: Counter[str] = Counter()

    def run(step: Step) -> list[dict[str, Any]]:
        outcomes.update(outcome for (_, outcome), n in step.other.items() for _ in range(n))
        if on_invalid is not None:
            for record, exc in step.invalid:
                on_invalid(record.offset, record.value, exc)
        return step.results

    for record in records:
        chunk.append(record)
        if len(chunk) >= FUSE_BATCH:
            yield from run(engine.step(chunk))
            chunk = []
    if chunk:
        yield from run(engine.step(chunk))
    yield from run(engine.finish())
    if outcomes["duplicate"] or outcomes["late"]:
        log.info(
            "%d duplicate and %d late events were not fused (a model's first event counts; "
            "a request is fused once)",
            outcomes["duplicate"],
            outcomes["late"],
        )


def fuse_records(
    config: Config,
    records: Iterable[tuple[int, bytes, int | None]],
    fuser: BatchFuser,
    on_invalid: OnInvalid | None = None,
) -> Iterator[dict[str, Any]]:
    """Fused results of ``records`` = ``(partition, value, record_ts_ms)``, in a
    deterministic order (closing order, see the module doc).

    ``on_invalid(index, value, error)`` receives each record the decoder rejects, with its
    0-based position in ``records``. Without it, invalid records are logged and a warning
    with their count per reason is logged at the end.
    """
    seen: Counter[str] = Counter()

    def report(index: int, value: bytes | None, exc: InvalidEvent) -> None:
        if not seen:
            log.warning(
                "record %d is invalid and not fused (%s): %s", index, exc.reason, exc.detail
            )
        else:
            log.debug("record %d is invalid (%s): %s", index, exc.reason, exc.detail)
        seen[exc.reason] += 1

    handle = on_invalid or report

    engine = Engine(config, fuser, event_time=True, encode=False)
    rows = (InRecord("", p, i, None, value, ts) for i, (p, value, ts) in enumerate(records))
    yield from _steps(engine, rows, handle)
    if seen:
        log.warning(
            "%d invalid records were not fused: %s",
            sum(seen.values()),
            ", ".join(f"{reason}={n}" for reason, n in sorted(seen.items())),
        )


def run_fuse(
    config: Config,
    input: Path,
    output: Path | None,
    partitions: int = 1,
    dlq: Path | None = None,
) -> int:
    """The body of ``fusion-worker fuse``: JSON Lines of prediction events in, one fused
    result per line out (standard output when ``output`` is None).

    ``partitions``: each event goes to partition ``murmur2(request_id) % partitions``, as
    Kafka's default partitioner would place it, so the output equals a replay of a topic
    with that many partitions. Blank lines are skipped. Invalid lines go to ``dlq`` as
    JSON Lines ``{"error", "error_detail", "line", "value"}`` (``line`` 1-based, ``value``
    the line as text); without ``dlq`` they are counted on standard error.

    Returns 0, or 1 when invalid lines were found and no ``dlq`` kept them.
    """
    if partitions < 1:
        raise ConfigError("--partitions", partitions, "must be >= 1")
    fuser = Fuser(config)
    invalid: Counter[str] = Counter()
    first_invalid: list[str] = []
    written = 0
    with ExitStack() as stack:
        source = stack.enter_context(_open(input, write=False))
        sink: IO[bytes] = (
            sys.stdout.buffer if output is None else stack.enter_context(_open(output, write=True))
        )
        dead = None if dlq is None else stack.enter_context(_open(dlq, write=True))

        def lines() -> Iterator[InRecord]:
            for number, line in enumerate(source, 1):
                value = line.rstrip(b"\r\n")
                if value.strip():
                    yield InRecord("", 0, number, None, value)

        def on_invalid(number: int, value: bytes | None, exc: InvalidEvent) -> None:
            invalid[exc.reason] += 1
            if not first_invalid:
                first_invalid.append(f"line {number}: {exc}")
            if dead is not None:
                dead.write(_dead_letter(number, value or b"", exc))

        engine = Engine(
            config,
            fuser,
            event_time=True,
            encode=False,
            partitions=partitions if partitions > 1 else None,
        )
        try:
            for result in _steps(engine, lines(), on_invalid):
                sink.write(orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE))
                written += 1
            sink.flush()
        except OSError as exc:
            raise FusionError(f"fuse: cannot read or write: {exc}") from exc
    n_invalid = sum(invalid.values())
    log.info("fuse: %d results from %s, %d invalid lines", written, input, n_invalid)
    if not n_invalid:
        return 0
    counts = ", ".join(f"{reason}={n}" for reason, n in sorted(invalid.items()))
    if dlq is not None:
        print(
            f"fusion-worker fuse: {n_invalid} invalid lines ({counts}) written to {dlq}",
            file=sys.stderr,
        )
        return 0
    print(
        f"fusion-worker fuse: {n_invalid} invalid lines were not fused ({counts}); "
        f"first at {first_invalid[0]}; pass --dlq FILE to keep them",
        file=sys.stderr,
    )
    return 1


def _open(path: Path, write: bool) -> IO[bytes]:
    try:
        return path.open("wb") if write else path.open("rb")
    except OSError as exc:
        what = "output" if write else "input"
        raise FusionError(f"cannot open {what} file {str(path)!r}: {exc.strerror}") from None


def _dead_letter(number: int, value: bytes, exc: InvalidEvent) -> bytes:
    return orjson.dumps(
        {
            "error": exc.reason,
            "error_detail": exc.detail,
            "line": number,
            "value": value.decode("utf-8", "replace"),
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )
