"""Where a lake's bytes live: a local directory, or an object store through ``pyarrow.fs``.

Both stores give the lake the same promise: an object (a shard's Parquet file, a manifest
record) appears whole or not at all.

* :class:`LocalStore` writes a hidden temporary file, fsyncs it and renames it into place.
  A write may leave its fsyncs to the next :meth:`LocalStore.checkpoint` (``durable=False``):
  the lake does that for a shard's first manifest record, whose loss to a power cut only
  means the shard is harvested again.
* :class:`ObjectStore` (``s3://``, ``gs://``, ``abfs://`` …) has no rename, so it writes each
  object straight to its final key: the object becomes visible only when its upload
  completes (single PUT, or multipart completed on close). A killed run leaves at most an
  unfinished multipart upload, invisible to readers, which the next run aborts. Transient
  storage errors (503 SlowDown, resets) are retried with backoff, separately from the API's.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.crashpoints import crash_point
from harvester.errors import LakeError, StorageError, UsageError, shown

log = logging.getLogger("harvester.store")
BUFFER = 1 << 20  # a streamed file's writes are gathered to this size
T = TypeVar("T")


def is_uri(out: str | Path) -> bool:
    return "://" in str(out)


# A key names a file or object under the lake's root: ``/``-separated segments of letters,
# digits and ``_ = . -``, none of them empty, ``.`` or ``..``, the first not starting with
# ``/``. Every name the lake writes passes here, so no key can reach outside ``--out``.
_SEGMENT = re.compile(r"[A-Za-z0-9_=.+-]{1,200}")


def check_key(key: str) -> str:
    """``key`` when it names a place inside the lake, else :class:`StorageError`."""
    segments = key.split("/")
    if len(segments) > 8 or not all(_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
        raise StorageError(f"refusing the lake key {shown(key)}: it could name a place outside the lake")
    return key


class StagedTable:
    """A Parquet file being written a row group at a time (a shard too large to hold in
    memory): invisible until :meth:`publish`, gone after :meth:`discard`."""

    def __init__(
        self, writer: pq.ParquetWriter, publish: Callable[[], int], discard: Callable[[], None], where: str
    ) -> None:
        self._writer = writer
        self._publish = publish
        self._discard = discard
        self.where = where

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"write {self.where}: {_short(e)}") from None

    def publish(self) -> int:
        """Finish the file and make it appear whole; returns its size in bytes."""
        try:
            return self._publish()
        except (OSError, pa.ArrowException) as e:
            self.discard()
            raise StorageError(f"write {self.where}: {_short(e)}") from None

    def discard(self) -> None:
        self._discard()


class LocalStore:
    """A directory on a local (or mounted) filesystem."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._unsynced: set[Path] = set()  # written with durable=False, not yet checkpointed
        self._unsynced_lock = threading.Lock()  # writes come from the I/O threads

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def check_usable(self) -> None:
        try:
            self._check_usable()
        except OSError as e:  # e.g. a parent directory this user may not enter
            raise UsageError(
                f"--out {self.root} cannot be used ({e.strerror or e}): choose a directory you can write to"
            ) from None

    def _check_usable(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--out {self.root} exists and is not a directory: choose another path")
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise UsageError(f"--out {self.root} cannot be created: {probe} is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise UsageError(f"--out {self.root} is not writable (no write permission on {probe})")

    def prepare(self) -> bool:
        """Create the lake's directory; True when this call created it."""
        try:
            existed = self.root.is_dir()
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LakeError(f"cannot create {self.root}: {e.strerror}") from None
        return not existed

    def remove_root_if_empty(self) -> None:
        with contextlib.suppress(OSError):
            self.root.rmdir()

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _tmp(self, key: str) -> tuple[Path, Path]:
        final = self.path(key)
        return final, final.with_name(f".{final.name}.{os.getpid()}.tmp")

    def _put(self, key: str, data: bytes | pa.Buffer, durable: bool = True) -> int:
        """Write ``data`` to a temporary file in one call, fsync it, rename it into place
        (``durable=False``: the fsyncs are left to :meth:`checkpoint`)."""
        final, tmp = self._tmp(key)
        view = memoryview(data)
        size = len(view)
        with _or_cannot_write(tmp, final):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            try:
                fd = os.open(tmp, flags, 0o644)
            except FileNotFoundError:  # the day's directory, made on its first file
                final.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, flags, 0o644)
            try:
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._rename(tmp, final, durable)
        return size

    def _publish(self, tmp: Path, final: Path) -> Path:
        """fsync the temporary file, rename it into place, fsync the directory."""
        with _or_cannot_write(tmp, final), open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        self._rename(tmp, final)
        return final

    def _rename(self, tmp: Path, final: Path, durable: bool = True) -> None:
        """Rename a temporary file into place, then fsync the directory (or leave both
        fsyncs to :meth:`checkpoint`)."""
        with _or_cannot_write(tmp, final):
            crash_point("before-rename")
            os.replace(tmp, final)
            if durable:
                _fsync_dir(final.parent)
            else:
                with self._unsynced_lock:
                    self._unsynced.add(final)
            crash_point("after-rename")

    def checkpoint(self) -> None:
        """Make every write made with ``durable=False`` durable: one ``syncfs`` of the lake's
        filesystem where Linux has it, else an fsync of each file and of its directory."""
        with self._unsynced_lock:
            files, self._unsynced = self._unsynced, set()
        if not files or _syncfs(self.root):
            return
        for f in files:
            with contextlib.suppress(OSError):  # replaced or removed since: nothing to sync
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for d in {f.parent for f in files}:
            _fsync_dir(d)

    def stage_table(self, key: str, schema: pa.Schema, **options: Any) -> StagedTable:
        """A Parquet file written a row group at a time, that appears whole on ``publish``."""
        final, tmp = self._tmp(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            sink = pa.BufferedOutputStream(pa.OSFile(str(tmp), "wb"), BUFFER)
            writer = pq.ParquetWriter(sink, schema, **options)
        except OSError as e:
            raise _cannot_write(final, e) from None

        def publish() -> int:
            writer.close()
            size = sink.tell()
            sink.close()
            self._publish(tmp, final)
            return int(size)

        def discard() -> None:
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(Exception):
                sink.close()
            with contextlib.suppress(OSError):
                tmp.unlink()

        return StagedTable(writer, publish, discard, f"{final}")

    def write(self, key: str, data: bytes, durable: bool = True) -> None:
        self._put(key, data, durable)

    def write_file(self, key: str, data: bytes | pa.Buffer) -> int:
        """An encoded file (a shard's Parquet), written so it appears whole."""
        return self._put(key, data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def has_data(self) -> bool:
        return self.root.is_dir() and any(p.name.startswith("date=") for p in self.root.iterdir())

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` unless it exists (False then). The data is written
        to a temporary file first and linked into place: the file never exists empty, even
        when the disk is full."""
        final, tmp = self._tmp(key)
        try:
            with _or_cannot_write(tmp, final):
                tmp.write_bytes(data)
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    return False
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return True

    def cleanup(self) -> int:
        """Delete temporary files left by a killed run (the caller holds the lock)."""
        n = 0
        for pattern in ("date=*/.*.tmp", "_manifest/date=*/.*.tmp", ".*.tmp"):
            for p in self.root.glob(pattern):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
        return n


def parquet_bytes(table: pa.Table, **options: Any) -> pa.Buffer:
    """A whole Parquet file in memory: encoding a small file straight to disk costs a system
    call per page header and column chunk, about a third of the time of writing it."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


@contextlib.contextmanager
def _or_cannot_write(tmp: Path, final: Path) -> Iterator[None]:
    """On an OSError: remove the temporary file, and fail naming the final one."""
    try:
        yield
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _cannot_write(final, e) from None


def _cannot_write(final: Path, e: OSError) -> LakeError:
    return LakeError(f"cannot write {final}: {e.strerror or e}")


@functools.cache
def _libc() -> Any:
    """The C library, where it has ``syncfs`` (Linux); None elsewhere."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "syncfs") else None


def _syncfs(path: Path) -> bool:
    """``syncfs(2)``: write back everything of the filesystem holding ``path`` in one call
    (where 140 manifest records would take 280 fsyncs). False where it is not available."""
    libc = _libc()
    if libc is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return bool(libc.syncfs(fd) == 0)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ObjectStore:
    """An object-store prefix (``s3://bucket/prefix`` and whatever else pyarrow.fs supports)."""

    local = False
    ATTEMPTS = 6

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.uri = uri.rstrip("/")
        parts = urlsplit(self.uri)
        self.scheme = parts.scheme
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        try:
            if self.scheme == "s3":
                kw: dict[str, Any] = {
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=4),
                    "connect_timeout": 10,
                    "request_timeout": 60,
                }
                if endpoint_url:
                    ep = urlsplit(endpoint_url)
                    kw["endpoint_override"] = ep.netloc
                    kw["scheme"] = ep.scheme or "https"
                if region:
                    kw["region"] = region
                self.fs: pafs.FileSystem = pafs.S3FileSystem(**kw)
                self.base = f"{self.bucket}/{self.prefix}".rstrip("/")
            else:
                self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as e:
            raise UsageError(f"--out {uri}: {_short(e)}") from None

    def describe(self) -> str:
        return self.uri

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.base}/{key}" if self.base else key

    def _retry(self, what: str, op: Callable[[], T]) -> T:
        for attempt in range(self.ATTEMPTS):
            try:
                return op()
            except (OSError, pa.ArrowException) as e:
                if isinstance(e, FileNotFoundError) or attempt == self.ATTEMPTS - 1:
                    raise StorageError(f"{what} {self.uri}: {_short(e)}") from None
                delay = random.uniform(0.5, 1.0) * min(8.0, 0.2 * 2**attempt)
                log.info("storage retry %d for %s: %s", attempt + 1, what, _short(e))
                time.sleep(delay)
        raise AssertionError("unreachable")

    def check_usable(self) -> None:
        try:
            info = self.fs.get_file_info(self.bucket if self.scheme == "s3" else self.base)
        except (OSError, pa.ArrowException) as e:
            raise LakeError(f"--out {self.uri}: {_short(e)}") from None
        if self.scheme == "s3" and info.type == pafs.FileType.NotFound:
            raise UsageError(f"--out {self.uri}: bucket {self.bucket!r} does not exist: create it first")

    def prepare(self) -> bool:
        return False  # object stores have no directories to create

    def remove_root_if_empty(self) -> None:
        return None

    def read(self, key: str) -> bytes | None:
        def op() -> bytes | None:
            try:
                with self.fs.open_input_stream(self._full(key)) as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

        return self._retry("read", op)

    def write(self, key: str, data: bytes, durable: bool = True) -> None:
        """Upload ``data`` (an object is durable once its upload completes: ``durable`` is moot)."""

        def op() -> None:
            with self.fs.open_output_stream(self._full(key)) as f:
                f.write(data)

        self._retry(f"write {key} to", op)

    def checkpoint(self) -> None:
        """Nothing to do: every completed upload is durable."""

    def write_file(self, key: str, data: bytes | pa.Buffer) -> int:
        """An encoded file uploaded so it appears whole (retried: encoded once, whatever the
        retries)."""

        def op() -> int:
            sink = self.fs.open_output_stream(self._full(key))
            try:
                sink.write(data)
            except BaseException:
                with contextlib.suppress(Exception):
                    sink.abort()
                raise
            return _complete_upload(sink)

        return self._retry(f"write {key} to", op)

    def stage_table(self, key: str, schema: pa.Schema, **options: Any) -> StagedTable:
        """A Parquet object uploaded a row group at a time (multipart), that appears whole
        on ``publish``; ``discard`` aborts the upload. Not retried: a failure fails the shard."""
        try:
            sink = self.fs.open_output_stream(self._full(key))
            writer = pq.ParquetWriter(sink, schema, **options)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"write {key} to {self.uri}: {_short(e)}") from None

        def publish() -> int:
            writer.close()
            return _complete_upload(sink)

        def discard() -> None:
            with contextlib.suppress(Exception):
                sink.abort()

        return StagedTable(writer, publish, discard, f"{self.uri}/{key}")

    def delete(self, key: str) -> None:
        def op() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._full(key))

        self._retry("delete from", op)

    def keys(self, prefix: str) -> list[str]:
        def op() -> list[str]:
            sel = pafs.FileSelector(self._full(prefix), recursive=True, allow_not_found=True)
            infos = self.fs.get_file_info(sel)
            cut = len(self.base) + 1 if self.base else 0
            return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

        return self._retry("list", op)

    def has_data(self) -> bool:
        def op() -> bool:
            sel = pafs.FileSelector(self.base, recursive=False, allow_not_found=True)
            return any(i.base_name.startswith("date=") for i in self.fs.get_file_info(sel))

        return self._retry("list", op)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Best effort (object stores here offer no create-if-absent): read, then write."""
        if self.read(key) is not None:
            return False
        self.write(key, data)
        return True

    def cleanup(self) -> int:
        """Abort unfinished multipart uploads under the lake's prefix (a killed run's)."""
        if self.scheme != "s3":
            return 0
        try:
            import boto3
        except ImportError:
            log.warning("boto3 is not installed: unfinished multipart uploads of a killed run are left "
                        "to the bucket's lifecycle rules (pip install 'vobiz-harvester[s3]')")  # fmt: skip
            return 0
        client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)
        n = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        except Exception as e:
            log.warning("could not abort unfinished uploads under %s: %s", self.uri, _short(e))
        if n:
            log.info("aborted %d unfinished multipart uploads under %s", n, self.uri)
        return n


def _complete_upload(sink: pa.NativeFile) -> int:
    """Finish an object's upload: the object appears now, whole; returns its size."""
    crash_point("before-upload-complete")
    size = sink.tell()
    sink.close()
    return int(size)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__


def open_store(out: str | Path, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """The store for ``--out``: a URI → :class:`ObjectStore`, else :class:`LocalStore`."""
    if is_uri(out):
        if str(out).startswith("file://"):
            return LocalStore(Path(urlsplit(str(out)).path))
        return ObjectStore(str(out), endpoint_url, region)
    return LocalStore(Path(out))
