"""Where a backtest's predictions and labels come from: a JSON Lines file, or a topic range
``TOPIC[,TOPIC...]@FROM..TO`` read with replay's reader (no ``TOPIC``: the configured
input topics). Prediction records keep their partition, so a topic range is joined
exactly as a replay joins it; a file is one partition, as ``fuse`` reads it by default.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

import orjson

from worker.config import Config
from worker.decode import Decoder
from worker.errors import ConfigError, FusionError, InvalidEvent
from worker.replay import Record, TopicRange, read_range

log = logging.getLogger(__name__)

Label = str | float


def load_predictions(config: Config, spec: str, progress: bool | None = None) -> list[Record]:
    """Prediction records (partition, value, record timestamp) from a file or a range."""
    rng = TopicRange.parse(spec, "--predictions")
    if rng is None:
        return [(0, line, None) for line in _lines(Path(spec), "--predictions")]
    topics = rng.topics or config.kafka.input_topics
    return asyncio.run(read_range(config, topics, rng.start, rng.end, progress=progress))


def load_labels(config: Config, spec: str) -> dict[str, Label]:
    """request_id -> label from ``{"request_id", "label"}`` lines or records (the text
    task: ``{"request_id", "text"}``, the reference text); a later record for the same
    request replaces an earlier one (as on a compacted topic)."""
    rng = TopicRange.parse(spec, "--labels")
    if rng is None:
        values: Iterable[tuple[str, bytes]] = (
            (f"{spec}:{i}", line) for i, line in enumerate(_lines(Path(spec), "--labels"), 1)
        )
    else:
        if not rng.topics:
            raise FusionError(f"--labels {spec!r}: name the labels topic (TOPIC@FROM..TO)")
        records = asyncio.run(
            read_range(config, rng.topics, rng.start, rng.end, co_partitioned=False, progress=False)
        )
        values = ((f"{spec} record {i}", r[1]) for i, r in enumerate(records))
    regression = config.fusion.is_regression
    field = "text" if config.fusion.is_text else "label"
    out: dict[str, Label] = {}
    for where, raw in values:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FusionError(f"{where}: not JSON ({exc})") from None
        rid = doc.get("request_id") if isinstance(doc, dict) else None
        label = doc.get(field) if isinstance(doc, dict) else None
        if not isinstance(rid, str) or not rid:
            raise FusionError(
                f"{where}: expected {{'request_id': str, {field!r}: ...}}, got {doc!r}"
            )
        if field == "text":
            if not isinstance(label, str):
                raise FusionError(
                    f"{where}: text must be the reference text (the text task), got {label!r}"
                )
            out[rid] = label
        elif regression:
            if isinstance(label, bool) or not isinstance(label, int | float):
                raise FusionError(
                    f"{where}: label must be a number (a regression config), got {label!r}"
                )
            out[rid] = float(label)
        else:
            if label not in config.fusion.labels:
                known = list(config.fusion.labels)
                raise FusionError(f"{where}: label {label!r} is not one of fusion.labels {known}")
            out[rid] = str(label)
    return out


def first_times(config: Config, records: Iterable[Record]) -> dict[str, int]:
    """request_id -> the smallest event ts of its valid events (invalid ones are skipped
    here, as the join skips them)."""
    decoder = Decoder(config)
    out: dict[str, int] = {}
    for _, value, ts in records:
        try:
            ev = decoder.decode(value, ts)
        except InvalidEvent:
            continue
        seen = out.get(ev.request_id)
        if seen is None or ev.ts < seen:
            out[ev.request_id] = ev.ts
    return out


def request_ids(config: Config, records: Iterable[Record]) -> list[str | None]:
    """The request id of each record (None for a record that does not decode)."""
    decoder = Decoder(config)
    out: list[str | None] = []
    for _, value, ts in records:
        try:
            out.append(decoder.decode(value, ts).request_id)
        except InvalidEvent:
            out.append(None)
    return out


def _lines(path: Path, name: str) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(name, str(path), "file not found") from None
    return [line for line in data.splitlines() if line.strip()]
