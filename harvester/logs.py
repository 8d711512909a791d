"""Logging set-up: text or JSON lines, to stderr or a file. No message carries a secret:
the client never formats headers, nothing logs a config or an account object whole, and a
filter masks the token in every record all the same (:func:`mask_secret`).

With ``--log-file`` the file also gets the run's *journal* (logger ``harvester.journal``):
a line when a run starts, and one when it ends with its result or its fatal error, so a
nightly job's log shows every run, quiet or failed. On stderr the journal is silent: the
summary and the error line say the same there."""

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


class _Mask(logging.Filter):
    """Replaces each registered secret in a record's message with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            msg = record.getMessage()
            masked = msg
            for secret in self.secrets:
                masked = masked.replace(secret, "***")
            if masked != msg:
                record.msg, record.args = masked, None
        return True


_MASK = _Mask()
JOURNAL = logging.getLogger("harvester.journal")
JOURNAL.addHandler(logging.NullHandler())  # before set-up, no last-resort print to stderr


def mask_secret(secret: str) -> None:
    """Mask ``secret`` (a token) in every log line from now on."""
    if secret and secret not in _MASK.secrets:
        _MASK.secrets.append(secret)


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
    handler.addFilter(_MASK)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp").setLevel(max(root.level, logging.WARNING))
    JOURNAL.setLevel(logging.INFO if file is not None else logging.CRITICAL + 1)
