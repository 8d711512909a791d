"""The lake's lock: one run writes a lake at a time.

``<out>/_lock`` holds the running harvest's pid, host and a heartbeat. A lock whose process
is gone (same host) or whose heartbeat is older than :data:`STALE_LOCK_SECONDS` (another
host) is stale and taken over; a live one makes the run fail at once with one line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
from typing import Any

import orjson

from harvester.errors import LakeError
from harvester.lake.store import Store, read_json

STALE_LOCK_SECONDS = 600  # a lock not refreshed for this long (another host) is stale
KEY = "_lock"


class LakeLock:
    """The lock of the lake on ``store``."""

    def __init__(self, store: Store, key: str = KEY) -> None:
        self.store = store
        self.key = key  # _lock for a whole lake; _locks/part-I-of-N for one part of a plan
        self.held = False
        self._beat = 0.0

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, taking over a stale one; :class:`LakeError` when a live run holds
        it for longer than ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._take()
            except LakeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _take(self) -> None:
        where = self.store.where
        me = _me()
        for _ in range(3):
            if self.store.create_exclusive(self.key, orjson.dumps(me)):
                self.held = True
                self._beat = time.time()
                return
            holder = read_json(self.store, self.key) or {}
            pid, host = holder.get("pid"), holder.get("host")
            beat = holder.get("beat")
            dead_here = host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)
            silent = isinstance(beat, (int, float)) and time.time() - beat > STALE_LOCK_SECONDS
            if not holder or dead_here or (host != me["host"] and silent):
                self.store.delete(self.key)  # stale (or half-written) lock: take it over
                continue
            raise LakeError(
                f"lake {where} is locked by pid {pid} on {host} since "
                f"{holder.get('since')}: wait for that run, or remove {where}/{self.key} if it is gone"
            )
        raise LakeError(f"could not take the lock {where}/{self.key}")

    def heartbeat(self) -> None:
        """Refresh the lock (at most once a minute) so other hosts do not think it stale."""
        if self.held and not self.store.local and time.time() - self._beat > 60:
            self._beat = time.time()
            self.store.write(self.key, orjson.dumps(_me()))

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(Exception):  # a lock we cannot delete goes stale by itself
                self.store.delete(self.key)
            self.held = False


def _me() -> dict[str, Any]:
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "beat": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
