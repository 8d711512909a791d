"""The Parquet lake: layout, atomic shard commits, the manifest, the lock.

Layout (a local directory, or an object-store prefix such as ``s3://bucket/cdr``)::

    <out>/_lake.json                           scope and filters this lake holds
    <out>/_lock                                held by the running harvest (pid, host)
    <out>/_manifest/date=YYYY-MM-DD/<who>.json one small record per committed shard
    <out>/date=YYYY-MM-DD/cdr-<who>.parquet    one file per non-empty shard

A shard's file appears whole or not at all (see :mod:`harvester.lake.store`), and only then
is it recorded in the manifest, durably: a reader that trusts the manifest never sees a
partial shard, and a re-run replaces, never duplicates. Names that start with ``_`` or ``.``
are skipped by Spark and DuckDB readers of the lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from harvester.errors import LakeError, UsageError, clean
from harvester.lake.crashpoints import crash_point
from harvester.lake.local import LocalStore
from harvester.lake.objects import ObjectStore
from harvester.lake.store import StagedTable, Store, is_uri
from harvester.records.encoding import WRITE_OPTIONS, parquet_bytes
from harvester.records.schema import SCHEMA
from harvester.records.shard import Shard

FORMAT = 1
STALE_LOCK_SECONDS = 600  # a lock not refreshed for this long (another host) is stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lake:
    """A lake on a store (opened for one run: lock, identity check, cleanup)."""

    def __init__(
        self,
        out: str | Path | Store,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.store: Store = open_store(out, endpoint_url, region) if isinstance(out, (str, Path)) else out
        self._locked = False
        self._beat = 0.0
        self._identity: dict[str, Any] | None = None  # a new lake's _lake.json, written with its first shard
        self._identity_lock = threading.Lock()  # commits come from several I/O threads
        self._made_root = False  # this run created the lake's directory

    @property
    def where(self) -> str:
        return self.store.describe()

    # -- opening -------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Fail early, naming ``--out``, if it cannot be a lake."""
        self.store.check_usable()

    def open(self, identity: dict[str, Any]) -> None:
        """Create, lock, check the lake holds this scope/filters, clean dead runs' leftovers.

        A new lake's ``_lake.json`` is written with its first committed shard, and a run
        that commits nothing into a directory it created leaves no directory behind."""
        self.check_usable()
        self._made_root = self.store.prepare()
        self._lock()
        try:
            self._check_identity(identity)
            self.store.cleanup()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._locked:
            with contextlib.suppress(Exception):  # a lock we cannot delete goes stale by itself
                self.store.delete("_lock")
            self._locked = False
            if self._made_root and self._identity is not None:
                self.store.remove_root_if_empty()  # nothing was committed into a lake made for this run

    def _me(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "beat": time.time()}

    def _lock(self) -> None:
        me = self._me()
        for _ in range(3):
            if self.store.create_exclusive("_lock", orjson.dumps(me)):
                self._locked = True
                self._beat = time.time()
                return
            holder = self._read_json("_lock") or {}
            pid, host = holder.get("pid"), holder.get("host")
            beat = holder.get("beat")
            dead_here = host == me["host"] and isinstance(pid, int) and not _pid_alive(pid)
            silent = isinstance(beat, (int, float)) and time.time() - beat > STALE_LOCK_SECONDS
            if not holder or dead_here or (host != me["host"] and silent):
                self.store.delete("_lock")  # stale (or half-written) lock: take it over
                continue
            raise LakeError(
                f"lake {self.where} is locked by pid {pid} on {host} since "
                f"{holder.get('since')}: wait for that run, or remove {self.where}/_lock if it is gone"
            )
        raise LakeError(f"could not take the lock {self.where}/_lock")

    def heartbeat(self) -> None:
        """Refresh the lock (at most once a minute) so other hosts do not think it stale."""
        if self._locked and not self.store.local and time.time() - self._beat > 60:
            self._beat = time.time()
            self.store.write("_lock", orjson.dumps(self._me()))

    def _check_identity(self, identity: dict[str, Any]) -> None:
        want = {"format": FORMAT, **identity}
        have = self._read_json("_lake.json")
        if have is None:
            if self.store.has_data():
                raise UsageError(f"--out {self.where} holds data but no _lake.json: use an empty directory")
            self._identity = want
            return
        if {k: have.get(k) for k in want} != want:
            raise UsageError(
                f"--out {self.where} holds {_identity_text(have)}, this run asks {_identity_text(want)}: "
                "use another --out (mixing them would duplicate or overwrite shards)"
            )

    def _write_identity(self) -> None:
        """A new lake's ``_lake.json``, before the first thing it describes is recorded."""
        with self._identity_lock:
            if self._identity is not None:
                self._write_lake_json(self._identity)
                self._identity = None

    def _write_lake_json(self, doc: dict[str, Any]) -> None:
        self.store.write("_lake.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def server_fact(self, key: str) -> Any:
        """A fact learnt about the API server and kept with the lake (e.g. its day window)."""
        return ((self._read_json("_lake.json") or {}).get("server") or {}).get(key)

    def record_server_fact(self, key: str, value: Any) -> None:
        with self._identity_lock:
            doc = self._identity or self._read_json("_lake.json") or {}
            self._identity = None
            doc.setdefault("server", {})[key] = value
            self._write_lake_json(doc)

    # -- shards --------------------------------------------------------------------------
    @staticmethod
    def file_key(shard: Shard) -> str:
        return f"date={shard.day.isoformat()}/{shard.file_name}"

    @staticmethod
    def manifest_key(shard: Shard) -> str:
        return f"_manifest/date={shard.day.isoformat()}/{shard.who}.json"

    def write_shard(self, shard: Shard, table: pa.Table) -> int:
        """Encode a shard's table and write its file (see :meth:`write_shard_file`)."""
        return self.write_shard_file(shard, parquet_bytes(table) if table.num_rows else b"")

    def write_shard_file(self, shard: Shard, data: bytes | pa.Buffer) -> int:
        """Write a shard's encoded file (here or by a decode worker) so it appears whole; an
        empty shard (no bytes) has no file. Returns bytes."""
        key = self.file_key(shard)
        if not data:
            self.store.delete(key)
            return 0
        return int(self.store.write_file(key, data))

    def stage_shard(self, shard: Shard) -> StagedTable:
        """A shard's file written a row group at a time, appearing whole on ``publish``."""
        options = {k: v for k, v in WRITE_OPTIONS.items() if k != "row_group_size"}
        return self.store.stage_table(self.file_key(shard), SCHEMA, **options)

    def commit(self, shard: Shard, record: dict[str, Any]) -> None:
        """Record a shard as committed, after its file is in place; the record is durable
        (fsynced, or uploaded) when this returns."""
        self._write_identity()
        data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        self.store.write(self.manifest_key(shard), data)
        crash_point("after-commit")
        self.heartbeat()

    def committed(self, shard: Shard) -> dict[str, Any] | None:
        return self._read_json(self.manifest_key(shard))

    def manifest(self) -> list[dict[str, Any]]:
        """Every committed shard's record (read in parallel: an object store answers slowly)."""
        keys = [
            k
            for k in self.store.keys("_manifest")
            if k.endswith(".json") and not k.rsplit("/", 1)[-1].startswith(".")
        ]
        if self.store.local or len(keys) < 8:
            recs = [self._read_json(k) for k in keys]
        else:
            with ThreadPoolExecutor(16) as pool:
                recs = list(pool.map(self._read_json, keys))
        return [r for r in recs if r is not None]

    def _read_json(self, key: str) -> dict[str, Any] | None:
        data = self.store.read(key)
        if data is None:
            return None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) else None


def open_store(out: str | Path, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """The store for ``--out``: a URI → :class:`ObjectStore`, else :class:`LocalStore`."""
    if is_uri(out):
        if str(out).startswith("file://"):
            return LocalStore(Path(urlsplit(str(out)).path))
        return ObjectStore(str(out), endpoint_url, region)
    return LocalStore(Path(out))


def _identity_text(doc: dict[str, Any]) -> str:
    """A lake's scope and filters in one line, e.g. ``scope=partner filters={}``."""
    filters = doc.get("filters")
    filters = filters if isinstance(filters, dict) else {}
    text = ",".join(f"{k}={v}" for k, v in sorted(filters.items()))
    return f"scope={clean(doc.get('scope'), 40)} filters={{{clean(text, 120)}}}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
