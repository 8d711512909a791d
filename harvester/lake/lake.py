"""The Parquet lake: layout, atomic shard commits, the manifest; opened for one run with its
lock and identity.

Layout (a local directory, or an object-store prefix such as ``s3://bucket/cdr``)::

    <out>/_lake.json                           scope and filters this lake holds (lake.identity)
    <out>/_lock                                held by the running harvest (lake.lock)
    <out>/_manifest/date=YYYY-MM-DD/<who>.json one small record per committed shard
    <out>/date=YYYY-MM-DD/cdr-<who>.parquet    one file per non-empty shard

A shard's file appears whole or not at all (see :mod:`harvester.lake.store`), and only then
is it recorded in the manifest, durably: a reader that trusts the manifest never sees a
partial shard, and a re-run replaces, never duplicates. Names that start with ``_`` or ``.``
are skipped by Spark and DuckDB readers of the lake.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from harvester.lake.crashpoints import crash_point
from harvester.lake.identity import LakeIdentity
from harvester.lake.local import LocalStore
from harvester.lake.lock import LakeLock
from harvester.lake.objects import ObjectStore
from harvester.lake.store import StagedTable, Store, is_uri, read_json
from harvester.records.encoding import WRITE_OPTIONS, parquet_bytes
from harvester.records.schema import SCHEMA
from harvester.records.shard import Shard, part_of, shard_key_of


class Lake:
    """A lake on a store (opened for one run: lock, identity check, cleanup)."""

    def __init__(
        self, out: str | Path | Store, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.store: Store = open_store(out, endpoint_url, region) if isinstance(out, (str, Path)) else out
        self.lock = LakeLock(self.store)
        self.identity = LakeIdentity(self.store)
        self._made_root = False  # this run created the lake's directory

    @property
    def where(self) -> str:
        return self.store.describe()

    def check_usable(self) -> None:
        """Fail early, naming ``--out``, if it cannot be a lake."""
        self.store.check_usable()

    def open(self, identity: dict[str, Any], part: tuple[int, int] | None = None) -> None:
        """Create, lock, check the lake holds this scope/filters, clean dead runs' leftovers.
        A run that commits nothing into a directory it created leaves no directory behind.

        With ``part`` (I, N), the run writes only the shards of part I of N: it locks that
        part (``_locks/part-I-of-N``), not the lake, so the N parts' workers write one lake at
        once, and it cleans only its own part's leftovers."""
        self.check_usable()
        self._made_root = self.store.prepare()
        if part is not None:
            self.lock = LakeLock(self.store, f"_locks/part-{part[0]}-of-{part[1]}")
        self.lock.acquire()
        try:
            self.identity.check(identity)
            self.store.cleanup(lambda key: _owned(key, part))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.lock.held:
            self.lock.release()
            if self._made_root and self.identity.pending is not None:
                self.store.remove_root_if_empty()  # nothing was committed into a lake made for this run

    # -- shards --------------------------------------------------------------------------
    @staticmethod
    def file_key(shard: Shard) -> str:
        return f"date={shard.day.isoformat()}/{shard.file_name}"

    @staticmethod
    def manifest_key(shard: Shard) -> str:
        return f"_manifest/date={shard.day.isoformat()}/{shard.who}.json"

    def write_shard(self, shard: Shard, table: pa.Table) -> int:
        """Encode a shard's table and write its file (see :meth:`write_file`)."""
        return self.write_file(shard, parquet_bytes(table) if table.num_rows else b"")

    def write_file(self, shard: Shard, data: bytes | pa.Buffer) -> int:
        """Write a shard's encoded file so it appears whole; an empty shard (no bytes) has no
        file. Returns bytes."""
        key = self.file_key(shard)
        if not len(data):
            self.store.delete(key)
            return 0
        return int(self.store.write(key, data))

    def stage_shard(self, shard: Shard) -> StagedTable:
        """A shard's file written a row group at a time, appearing whole on ``publish``."""
        options = {k: v for k, v in WRITE_OPTIONS.items() if k != "row_group_size"}
        return self.store.stage_table(self.file_key(shard), SCHEMA, **options)

    def commit(self, shard: Shard, record: dict[str, Any]) -> None:
        """Record a shard as committed, after its file is in place; the record is durable
        (fsynced, or uploaded) when this returns."""
        self.identity.write_pending()
        data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        self.store.write(self.manifest_key(shard), data)
        crash_point("after-commit")
        self.lock.heartbeat()

    def committed(self, shard: Shard) -> dict[str, Any] | None:
        return read_json(self.store, self.manifest_key(shard))

    def manifest(self, days: Iterable[dt.date]) -> list[dict[str, Any]]:
        """The committed records of ``days``, read in parallel (an object store answers slowly).
        A record whose file is gone from the lake (deleted, expired by a lifecycle rule) comes
        back with ``"file_missing": True``. Reads one listing of the manifest and one of the
        data files per day: the cost follows the days asked, not the lake's age."""
        keys: list[str] = []
        files: set[str] = set()
        for day in days:
            keys += [k for k in self.store.keys(f"_manifest/date={day.isoformat()}") if _is_record(k)]
            files |= set(self.store.keys(f"date={day.isoformat()}"))
        if self.store.local or len(keys) < 8:
            recs = [read_json(self.store, k) for k in keys]
        else:
            with ThreadPoolExecutor(16) as pool:
                recs = list(pool.map(lambda k: read_json(self.store, k), keys))
        found = [r for r in recs if r is not None]
        for rec in found:
            if rec.get("file") and rec["file"] not in files:
                rec["file_missing"] = True
        return found


def _owned(key: str, part: tuple[int, int] | None) -> bool:
    """Whether a run of ``part`` (None: the whole lake) owns a lake key's leftovers."""
    if part is None:
        return True
    shard = shard_key_of(key)
    return shard is not None and part_of(shard, part[1]) == part[0]


def _is_record(key: str) -> bool:
    return key.endswith(".json") and not key.rsplit("/", 1)[-1].startswith(".")


def open_store(out: str | Path, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """The store for ``--out``: a URI → :class:`ObjectStore`, else :class:`LocalStore`."""
    if is_uri(out):
        if str(out).startswith("file://"):
            return LocalStore(Path(urlsplit(str(out)).path))
        return ObjectStore(str(out), endpoint_url, region)
    return LocalStore(Path(out))
