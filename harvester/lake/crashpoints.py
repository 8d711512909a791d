"""Deterministic crash points for kill -9 tests of resume (off unless the env asks).

``VOBIZ_HARVEST_CRASH=<point>:<n>`` makes the process SIGKILL itself the n-th time it passes
``<point>``: ``before-rename`` (a file written under its temporary name), ``after-rename``
(a file in place), ``after-commit`` (a shard's record staged), ``after-day-file`` (a day's
new file in place, its manifest not yet written) or ``after-day-doc`` (the day's manifest
written, its staged shards not yet removed).
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_SPEC = os.environ.get("VOBIZ_HARVEST_CRASH", "")
_seen: Counter[str] = Counter()
_lock = threading.Lock()  # commits run in several threads: count each passage exactly once


def crash_point(name: str) -> None:
    """SIGKILL this process here if the environment scheduled it."""
    if not _SPEC:
        return
    point, _, n = _SPEC.partition(":")
    if point != name:
        return
    with _lock:
        _seen[name] += 1
        hit = _seen[name] == int(n or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
