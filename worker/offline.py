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

Labels (``--labels FILE``, schemas/label.v1.json per line): merged into the event-time
stream by ts (sorted by ts, ties in file order; a label comes after the predictions of
its ts and before the first prediction of a later ts; labels later than every prediction
come after the end of input), and learnt from as live (worker/learning.py): quality,
and with ``[fusion] weights = "adaptive"`` the weights each result names.

Invalid input is never dropped silently: ``fuse_records`` hands each invalid record to
``on_invalid`` (or logs it and warns with the counts at the end); ``run_fuse`` writes
invalid lines to ``--dlq`` or reports them on standard error.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import orjson

from worker.config import Config
from worker.engine import BatchFuser, Engine, InRecord, Step
from worker.errors import ConfigError, FusionError, InvalidEvent
from worker.fusion import Fuser
from worker.fusion.result import result_json
from worker.learning import Learning
from worker.murmur2 import partition_for

log = logging.getLogger(__name__)

# Records go to the engine in steps of this many; what closes in a step is fused as one
# batch (the fusion is vectorised). Any step size gives the same results.
FUSE_BATCH = 4096
# The topic name the engine reads label records under, offline.
LABELS_TOPIC = "<labels>"

__all__ = ["FUSE_BATCH", "BatchFuser", "fuse_records", "run_fuse"]

OnInvalid = Callable[[int, bytes | None, InvalidEvent], None]


def _steps(
    engine: Engine,
    records: Iterable[InRecord],
    on_invalid: OnInvalid | None,
    tail: Iterable[InRecord] = (),
    on_invalid_label: OnInvalid | None = None,
) -> Iterator[dict[str, Any]]:
    """Drive ``engine`` over ``records`` in steps of FUSE_BATCH records, then finish, then
    read ``tail`` (the labels later than every prediction)."""
    chunk: list[InRecord] = []
    outcomes: Counter[str] = Counter()
    feedback: Counter[str] = Counter()

    def run(step: Step) -> list[dict[str, Any]]:
        outcomes.update(outcome for (_, outcome), n in step.other.items() for _ in range(n))
        feedback.update(step.feedback)
        for record, exc in step.invalid:
            handle = on_invalid_label if record.topic == LABELS_TOPIC else on_invalid
            if handle is not None:
                handle(record.offset, record.value, exc)
        return step.results

    for record in records:
        chunk.append(record)
        if len(chunk) >= FUSE_BATCH:
            yield from run(engine.step(chunk))
            chunk = []
    if chunk:
        yield from run(engine.step(chunk))
    yield from run(engine.finish())
    rest = list(tail)
    if rest:
        yield from run(engine.step(rest))
    if engine.learning is not None:
        learning = engine.learning
        log.info(
            "labels by outcome: %s; weights %s",
            dict(sorted(feedback.items())),
            {p: learning.learners[p].weights.round(4).tolist() for p in sorted(learning.learners)},
        )
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
    labels: Sequence[InRecord] = (),
) -> Iterator[dict[str, Any]]:
    """Fused results of ``records`` = ``(partition, value, record_ts_ms)``, in a
    deterministic order (closing order, see the module doc).

    ``on_invalid(index, value, error)`` receives each record the decoder rejects, with its
    0-based position in ``records``. Without it, invalid records are logged and a warning
    with their count per reason is logged at the end.

    ``labels``: label records (``read_labels``), merged in by ts and learnt from; the
    fuser must then be a ``Fuser``. Invalid ones are logged.
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

    learning = None
    if labels:
        if not isinstance(fuser, Fuser):
            raise ConfigError("--labels", "<file>", "learns with one strategy, not several")
        # A Fuser of its own: learning moves its weights, and each call starts afresh
        # (replay calls once per partition number) from the configured ones.
        fuser = Fuser(config, strategy=fuser.strategy, temperatures=fuser.temperatures)
        learning = Learning(config, fuser.weights)
    engine = Engine(
        config,
        fuser,
        event_time=True,
        encode=False,
        learning=learning,
        labels_topic=LABELS_TOPIC,
    )
    rows: Iterable[InRecord] = (
        InRecord("", p, i, None, value, ts) for i, (p, value, ts) in enumerate(records)
    )
    tail: list[InRecord] = []
    if labels:
        rows, tail = merge_labels(rows, list(labels))

    def label_invalid(number: int, value: bytes | None, exc: InvalidEvent) -> None:
        log.warning("label line %d is invalid and not learnt from (%s)", number, exc)

    yield from _steps(engine, rows, handle, tail, label_invalid)
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
    labels: Path | None = None,
) -> int:
    """The body of ``fusion-worker fuse``: JSON Lines of prediction events in, one fused
    result per line out (standard output when ``output`` is None).

    ``partitions``: each event goes to partition ``murmur2(request_id) % partitions``, as
    Kafka's default partitioner would place it, so the output equals a replay of a topic
    with that many partitions. Blank lines are skipped. Invalid lines go to ``dlq`` as
    JSON Lines ``{"error", "error_detail", "line", "value"}`` (``line`` 1-based, ``value``
    the line as text); without ``dlq`` they are counted on standard error.

    ``labels``: a JSON Lines file of label events, merged in by ts (see the module doc).
    Its invalid lines are reported as the input's are, with ``"file": "labels"``.

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

        def invalid_in(file: str | None) -> OnInvalid:
            def on_invalid(number: int, value: bytes | None, exc: InvalidEvent) -> None:
                invalid[exc.reason] += 1
                if not first_invalid:
                    where = f"line {number}" if file is None else f"{file} line {number}"
                    first_invalid.append(f"{where}: {exc}")
                if dead is not None:
                    dead.write(_dead_letter(number, value or b"", exc, file))

            return on_invalid

        learning = None if labels is None else Learning(config, fuser.weights)
        engine = Engine(
            config,
            fuser,
            event_time=True,
            encode=False,
            partitions=partitions if partitions > 1 else None,
            learning=learning,
            labels_topic=LABELS_TOPIC,
        )
        records: Iterable[InRecord] = lines()
        tail: list[InRecord] = []
        if labels is not None:
            label_records = read_labels(stack.enter_context(_open(labels, write=False)))
            records, tail = merge_labels(records, label_records)
        try:
            steps = _steps(engine, records, invalid_in(None), tail, invalid_in("labels"))
            for result in steps:
                sink.write(result_json(result) + b"\n")
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


def _dead_letter(number: int, value: bytes, exc: InvalidEvent, file: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "error": exc.reason,
        "error_detail": exc.detail,
        "line": number,
        "value": value.decode("utf-8", "replace"),
    }
    if file is not None:
        doc["file"] = file
    return orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE)


def _ts_of(value: bytes | None) -> int | None:
    """The ``ts`` of a JSON event, or None when it has none (or is not valid)."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    ts = doc.get("ts") if type(doc) is dict else None
    return ts if type(ts) is int else None


def _ts_or_first(record: InRecord) -> int:
    return -1 if record.timestamp is None else record.timestamp


def read_labels(source: Iterable[bytes]) -> list[InRecord]:
    """The label lines of ``source`` as records of LABELS_TOPIC (offset = the 1-based line
    number, timestamp = its ts), sorted by ts, ties in file order; a line without a
    valid ts sorts first (it is rejected as it is read)."""
    out: list[tuple[int, InRecord]] = []
    for number, line in enumerate(source, 1):
        value = line.rstrip(b"\r\n")
        if value.strip():
            ts = _ts_of(value)
            record = InRecord(LABELS_TOPIC, 0, number, None, value, ts)
            out.append((-1 if ts is None else ts, record))
    out.sort(key=lambda pair: pair[0])  # stable: ties keep the file order
    return [record for _, record in out]


def labels_by_partition(labels: Iterable[InRecord], partitions: int) -> dict[int, list[InRecord]]:
    """Label records grouped by, and placed on, the partition number Kafka's partitioner
    gives their request_id (a line without one goes to 0, where it is rejected), order
    kept."""
    out: dict[int, list[InRecord]] = {}
    for record in labels:
        try:
            doc = orjson.loads(record.value or b"")
        except orjson.JSONDecodeError:
            doc = None
        rid = doc.get("request_id") if type(doc) is dict else None
        p = partition_for(rid.encode(), partitions) if type(rid) is str else 0
        out.setdefault(p, []).append(dataclasses.replace(record, partition=p))
    return out


def merge_labels(
    predictions: Iterable[InRecord], labels: list[InRecord]
) -> tuple[Iterator[InRecord], list[InRecord]]:
    """``predictions`` in their order with ``labels`` (sorted by ts) merged in: a label
    goes before the first prediction whose ts is later than its own. A prediction
    without a ts keeps the last ts seen. Returns the merged stream and the labels that
    the stream never reached (later than every prediction); the stream must be read
    to its end before the second is complete."""
    tail: list[InRecord] = []

    def merged() -> Iterator[InRecord]:
        i, current = 0, -1
        for record in predictions:
            ts = _ts_of(record.value)
            if ts is not None:
                current = max(current, ts)
            while i < len(labels) and _ts_or_first(labels[i]) < current:
                yield labels[i]
                i += 1
            yield record
        tail.extend(labels[i:])

    return merged(), tail
