"""Logging set-up: human text or one JSON object per line (for log shippers)."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str, fmt: str) -> None:
    """Send every record at ``level`` and above (the worker's and its libraries', aiokafka
    included, though never aiokafka's DEBUG) to standard error, as text or JSON
    (``fmt``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka's records (group joins, retries, reconnects) are what an operator needs
    # when a broker misbehaves, so they follow [log] level like the worker's own, but
    # never below INFO: its DEBUG records dump every protocol request, the SASL
    # handshake's bytes among them, which hold a PLAIN password in clear.
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.INFO))
