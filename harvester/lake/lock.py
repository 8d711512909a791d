"""The lake's lock: one run writes a lake at a time.

``<out>/_lock`` holds the running harvest's pid, host, a heartbeat and a token of its own. A
lock whose process is gone (same host) or whose heartbeat is older than
:data:`STALE_LOCK_SECONDS` (another host) is stale and taken over; a live one makes the run
fail at once with one line (or, given ``wait``, is waited for).

Only a lock held by a live run is waited for: a lock that cannot be written (disk full,
read-only, the store refusing) fails at once. A lock holding this taker's own token is its
own (a create retried after its first attempt landed). On an object store a taker reads the
lock back after creating it and holds it only if its token is there. On S3 the create is a
conditional PUT (:meth:`~harvester.lake.objects.ObjectStore.create_exclusive`), so of two
takers only one creates it; where a store offers no condition (or ignores it), the read-back
narrows the race to two writes landing between one taker's write and its read-back
(milliseconds), and does not close it. A stale lock is taken over by replacing it only
while it still holds what the taker read (locally under a ``flock`` of the lake's directory,
on S3 a PUT conditional on its ETag), so two takers that both found it stale cannot both
take it over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
import uuid
from typing import Any

import orjson

from harvester.errors import LockHeld
from harvester.lake.store import Store, parse_json

STALE_LOCK_SECONDS = 600  # a lock not refreshed for this long (another host) is stale
KEY = "_lock"


class LakeLock:
    """The lock of the lake on ``store``."""

    def __init__(self, store: Store, key: str = KEY) -> None:
        self.store = store
        self.key = key  # _lock for a whole lake; _locks/part-I-of-N for one part of a plan
        self.held = False
        self._beat = 0.0
        self._token = uuid.uuid4().hex  # tells this taker's lock from any other's

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, taking over a stale one; :class:`LockHeld` when a live run holds
        it for longer than ``wait`` seconds, :class:`LakeError` at once when it cannot be
        written."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._take()
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _take(self) -> None:
        where = self.store.where
        doc = self._me()
        me, here = orjson.dumps(doc), doc["host"]
        for _ in range(3):
            # A local create is exclusive. Otherwise the lock is read back: it is ours if it
            # holds our token (written just now and not replaced since, on a store whose
            # create may not be exclusive; or an earlier attempt of ours that landed).
            if self.store.create_exclusive(self.key, me) and self.store.local:
                return self._hold()
            raw = self.store.read(self.key)
            if raw is None:
                continue  # released between our create and our read: create again
            holder = parse_json(raw) or {}
            if holder.get("token") == self._token:
                return self._hold()
            pid, host = holder.get("pid"), holder.get("host")
            beat = holder.get("beat")
            dead_here = host == here and isinstance(pid, int) and not pid_alive(pid)
            silent = isinstance(beat, (int, float)) and time.time() - beat > STALE_LOCK_SECONDS
            if not holder or dead_here or (host != here and silent):
                # A stale (or half-written) lock: replaced by ours only while it is still
                # that lock, so of two takers that both found it stale one takes it over
                # and the other then finds the first's lock. Read back next time round.
                self.store.create_exclusive(self.key, me, replacing=raw)
                continue
            raise LockHeld(
                f"lake {where} is locked by pid {pid} on {host} since "
                f"{holder.get('since')}: wait for that run, or remove {where}/{self.key} if it is gone"
            )
        raise LockHeld(f"could not take the lock {where}/{self.key}: other runs keep taking it")

    def _hold(self) -> None:
        self.held = True
        self._beat = time.time()

    def heartbeat(self) -> None:
        """Refresh the lock (at most once a minute) so other hosts do not think it stale."""
        if self.held and not self.store.local and time.time() - self._beat > 60:
            self._beat = time.time()
            self.store.write(self.key, orjson.dumps(self._me()))

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(Exception):  # a lock we cannot delete goes stale by itself
                self.store.delete(self.key)
            self.held = False

    def _me(self) -> dict[str, Any]:
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        host = socket.gethostname()
        return {"pid": os.getpid(), "host": host, "since": since, "beat": time.time(), "token": self._token}


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has ``pid``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
