"""The Parquet lake: layout, atomic shard commits, the manifest; opened for one run with its
lock and identity.

Layout (a local directory, or an object-store prefix such as ``s3://bucket/cdr``)::

    <out>/_lake.json                         scope and filters this lake holds (lake.identity)
    <out>/_lock, _locks/part-I-of-N          held by the running harvest (lake.lock)
    <out>/_locks/date=YYYY-MM-DD             held while that day's file is rewritten
    <out>/_staging/date=YYYY-MM-DD/<who>.*   committed shards not yet in their day's file
    <out>/_manifest/date=YYYY-MM-DD.json     the day: each folded shard's record, what failed
    <out>/date=YYYY-MM-DD/cdr.parquet        the day's rows, every customer's, in one file

A shard is fetched, verified, staged and committed on its own (resume stays at one shard);
its rows become visible when its day is folded into the day's file, which is replaced whole
(:mod:`harvester.lake.days`). A reader globbing ``date=*/*.parquet`` (or ``**/*.parquet``)
never sees part of a shard or a record twice. Names that start with ``_`` or ``.`` are
skipped by Spark and pyarrow readers, and no file outside ``date=*/`` ends in ``.parquet``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from harvester.lake import days
from harvester.lake.crashpoints import crash_point
from harvester.lake.identity import LakeIdentity
from harvester.lake.local import LocalStore
from harvester.lake.lock import LakeLock
from harvester.lake.objects import ObjectStore
from harvester.lake.store import StagedTable, Store, is_uri
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

    @property
    def where(self) -> str:
        return self.store.where

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
        self.store.prepare()
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
            self.lock.release()  # a directory made for a run that committed nothing goes with it

    # -- shards --------------------------------------------------------------------------
    @staticmethod
    def file_key(shard: Shard) -> str:
        """Where a shard's rows are kept until its day is folded (see :mod:`lake.days`)."""
        return days.staged_data(shard.day, shard.who)

    def write_file(self, shard: Shard, data: pa.Table | bytes | pa.Buffer | StagedTable) -> int:
        """Stage a shard's file so it appears whole: its rows, their encoding, or a file
        written a row group at a time (:meth:`stage_shard`), each labelled with its one
        block (see :func:`lake.days.fold`); an empty shard has no file. Returns bytes."""
        if isinstance(data, StagedTable):
            data.label(days.block_label(shard.who, data.rows))
            return data.publish()
        if isinstance(data, pa.Table):
            labelled = data.replace_schema_metadata(days.block_label(shard.who, data.num_rows))
            data = parquet_bytes(labelled) if data.num_rows else b""
        key = self.file_key(shard)
        if not len(data):
            self.store.delete(key)
            return 0
        return int(self.store.write(key, data))

    def stage_shard(self, shard: Shard) -> StagedTable:
        """A shard's staged file written a row group at a time, appearing whole on ``publish``."""
        options = {k: v for k, v in WRITE_OPTIONS.items() if k != "row_group_size"}
        return self.store.stage_table(self.file_key(shard), SCHEMA, **options)

    def commit(self, shard: Shard, record: dict[str, Any]) -> None:
        """Record a shard as committed, after its staged file is in place; the record is
        durable (fsynced, or uploaded) when this returns. Its rows become visible to readers
        when its day is folded (:meth:`fold`)."""
        self.identity.write_pending()
        data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        self.store.write(days.staged_record(shard.day, shard.who), data)
        crash_point("after-commit")
        self.lock.heartbeat()

    def committed(self, shard: Shard) -> dict[str, Any] | None:
        """A shard's committed record (folded into its day, or staged), or None."""
        return self._day(shard.day).get(shard.who)

    def manifest(self, dates: Iterable[dt.date]) -> list[dict[str, Any]]:
        """The committed records of ``dates``: each day's manifest document overlaid by its
        staged records. A record whose rows are gone from the lake (a file deleted, an object
        expired by a lifecycle rule) comes back with ``"file_missing": True``. Three calls
        per day (the document, two listings) and one read per staged record: the cost follows
        the days asked, not the lake's age."""
        return [rec for day in dates for rec in self._day(day).values()]

    def _day(self, day: dt.date) -> dict[str, dict[str, Any]]:
        data = set(self.store.keys(f"date={day.isoformat()}"))
        return days.read_day(self.store, day, data, self.store.keys(f"_staging/date={day.isoformat()}"))

    def staged_days(self) -> list[dt.date]:
        """Days with shards committed but not folded (a run stopped before folding them)."""
        found = set()
        for key in self.store.keys("_staging"):
            day = shard_key_of(key)
            if day is not None and key.endswith(".json"):
                found.add(dt.date.fromisoformat(day.split("/")[0]))
        return sorted(found)

    def fold(self, day: dt.date, failed: dict[str, str], cleared: set[str]) -> bool:
        """Make the day's file hold its committed shards (see :func:`lake.days.fold`), under
        the day's lock: the workers of a partitioned run share days."""
        lock = LakeLock(self.store, f"_locks/date={day.isoformat()}")
        lock.acquire(wait=DAY_LOCK_WAIT)
        try:
            return days.fold(self.store, day, failed, cleared)
        finally:
            lock.release()


DAY_LOCK_WAIT = 600.0  # seconds to wait for another worker folding the same day


def _owned(key: str, part: tuple[int, int] | None) -> bool:
    """Whether a run of ``part`` (None: the whole lake) owns a lake key's leftovers."""
    if part is None:
        return True
    if key.endswith("/cdr.parquet"):  # a day file: written under its day's lock, by any part
        return False
    shard = shard_key_of(key)
    return shard is not None and part_of(shard, part[1]) == part[0]


def open_store(out: str | Path, endpoint_url: str | None = None, region: str | None = None) -> Store:
    """The store for ``--out``: a URI → :class:`ObjectStore`, else :class:`LocalStore`."""
    if is_uri(out):
        if str(out).startswith("file://"):
            return LocalStore(Path(urlsplit(str(out)).path))
        return ObjectStore(str(out), endpoint_url, region)
    return LocalStore(Path(out))
