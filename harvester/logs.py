"""Logging set-up: text or JSON lines, to stderr or a file. No message carries a secret:
the client never formats headers, and nothing logs a config or an account object whole."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path

import orjson

from harvester.errors import UsageError


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup(level: str = "warning", fmt: str = "text", file: Path | None = None) -> None:
    """Configure the root logger once for this process."""
    if file is not None:
        try:
            handler: logging.Handler = logging.FileHandler(file, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--log-file {file}: {e.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(max(root.level, logging.WARNING))
