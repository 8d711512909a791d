"""The Parquet lake: layout, atomic shard commits, the manifest, the lock.

Layout::

    <out>/_lake.json                          scope and filters this lake holds
    <out>/_lock                               held by the running harvest (pid, host)
    <out>/_manifest/date=YYYY-MM-DD/<who>.json one small record per committed shard
    <out>/date=YYYY-MM-DD/cdr-<who>.parquet   one file per non-empty shard

A shard is written to ``.cdr-<who>.parquet.<pid>.tmp`` (hidden from Spark and from a
``*.parquet`` glob), fsynced, renamed over its final name, and only then recorded in the
manifest. Readers never see half a shard; a re-run replaces, never duplicates. Names that
start with ``_`` or ``.`` are skipped by Spark and DuckDB readers of the lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.crashpoints import crash_point
from harvester.errors import LakeError, UsageError
from harvester.plan import Shard

FORMAT = 1
# Low-cardinality columns only: dictionary-encoding uuids and numbers is wasted work per file.
DICTIONARY_COLUMNS = [
    "account_id",
    "call_direction",
    "currency",
    "hangup_cause",
    "hangup_cause_name",
    "hangup_disposition",
    "hangup_source",
    "failure_code",
    "failure_reason",
    "sip_user_agent",
    "codec",
    "context",
    "region",
    "origination_region",
    "trunk_id",
    "campaign_id",
]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lake:
    """A local directory lake (opened for one run: lock, identity check, cleanup)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locked = False

    # -- opening -------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Fail early, with the path, if ``--out`` cannot be a lake."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--out {self.root} exists and is not a directory: choose another path")
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise UsageError(f"--out {self.root} cannot be created: {probe} is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(f"--out {self.root} is not writable (no write permission on {probe})")

    def open(self, identity: dict[str, Any]) -> None:
        """Create, lock, check the lake holds this scope/filters, clean dead runs' temps."""
        self.check_usable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LakeError(f"cannot create {self.root}: {e.strerror}") from None
        self._lock()
        try:
            self._check_identity(identity)
            self._cleanup_temps()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._locked:
            with contextlib.suppress(OSError):
                (self.root / "_lock").unlink()
            self._locked = False

    def _lock(self) -> None:
        path = self.root / "_lock"
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_json(path) or {}
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # stale lock of a dead process: take it over
                    continue
                if not holder:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # half-written lock (writer killed): take it over
                    continue
                raise LakeError(
                    f"lake {self.root} is locked by pid {pid} on {host} since "
                    f"{holder.get('since')}: wait for that run, or remove {path} if it is gone"
                ) from None
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(me))
            self._locked = True
            return
        raise LakeError(f"could not take the lock {path}")

    def _check_identity(self, identity: dict[str, Any]) -> None:
        path = self.root / "_lake.json"
        want = {"format": FORMAT, **identity}
        have = self._read_json(path)
        if have is None:
            if any(p.name.startswith("date=") for p in self.root.iterdir()):
                raise UsageError(f"--out {self.root} holds data but no _lake.json: use an empty directory")
            _write_atomic(path, orjson.dumps(want, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            return
        if have != want:
            raise UsageError(
                f"--out {self.root} holds scope={have.get('scope')} filters={have.get('filters')}, "
                f"this run asks scope={identity.get('scope')} filters={identity.get('filters')}: "
                "use another --out (mixing them would duplicate or overwrite shards)"
            )

    def _cleanup_temps(self) -> int:
        """Delete temporary files left by a killed run (we hold the lock: none are live)."""
        n = 0
        for pattern in ("date=*/.*.tmp", "_manifest/date=*/.*.tmp", ".*.tmp"):
            for p in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
        return n

    # -- shards --------------------------------------------------------------------------
    def partition(self, shard: Shard) -> Path:
        return self.root / f"date={shard.day.isoformat()}"

    def file_path(self, shard: Shard) -> Path:
        return self.partition(shard) / shard.file_name

    def manifest_path(self, shard: Shard) -> Path:
        return self.root / "_manifest" / f"date={shard.day.isoformat()}" / f"{shard.who}.json"

    def write_shard(self, shard: Shard, table: pa.Table) -> int:
        """Write a shard's file atomically (or remove it when empty); returns bytes written."""
        final = self.file_path(shard)
        if table.num_rows == 0:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
            return 0
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                table,
                tmp,
                compression="zstd",
                row_group_size=128 * 1024,
                coerce_timestamps="us",
                allow_truncated_timestamps=False,
                use_dictionary=DICTIONARY_COLUMNS,
            )
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            crash_point("before-rename")
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            crash_point("after-rename")
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise LakeError(f"cannot write {final}: {e.strerror or e}") from None
        return final.stat().st_size

    def commit(self, shard: Shard, record: dict[str, Any]) -> None:
        """Record a shard as committed (after its file is in place)."""
        path = self.manifest_path(shard)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        except OSError as e:
            raise LakeError(f"cannot write {path}: {e.strerror or e}") from None
        crash_point("after-commit")

    def committed(self, shard: Shard) -> dict[str, Any] | None:
        return self._read_json(self.manifest_path(shard))

    def manifest(self) -> list[dict[str, Any]]:
        """Every committed shard's record."""
        out = []
        for p in sorted((self.root / "_manifest").glob("date=*/*.json")):
            rec = self._read_json(p)
            if rec is not None:
                out.append(rec)
        return out

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            doc = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError, IsADirectoryError):
            return None
        return doc if isinstance(doc, dict) else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
