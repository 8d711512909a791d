"""A lake in a local (or mounted) directory: every object is written to a hidden temporary
file, fsynced, renamed into place and its directory fsynced, so it appears whole or not at
all and is durable once written."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import LakeError, UsageError
from harvester.lake.crashpoints import crash_point
from harvester.lake.store import BUFFER, StagedTable, check_key

try:
    import fcntl
except ImportError:  # Windows: a stale lock's takeover is not serialised there
    fcntl = None  # type: ignore[assignment]


class LocalStore:
    """A directory on a local (or mounted) filesystem."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)  # how messages name the lake
        self._made_root = False  # see prepare

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def check_usable(self) -> None:
        try:
            _check_usable(self.root)
        except OSError as e:  # e.g. a parent directory this user may not enter
            raise UsageError(
                f"--out {self.root} cannot be used ({e.strerror or e}): choose a directory you can write to"
            ) from None

    def prepare(self) -> None:
        """Create the lake's directory. One this call created goes again when its last file
        is deleted: a run that committed nothing (its lock released) leaves no directory."""
        try:
            self._made_root = not self.root.is_dir()
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LakeError(f"cannot create {self.root}: {e.strerror}") from None

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def open_file(self, key: str) -> pa.NativeFile | None:
        """``key`` open for random access (read as asked, not whole); None when missing."""
        try:
            return pa.OSFile(str(self.path(key)), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write(self, key: str, data: bytes | pa.Buffer) -> int:
        """Write ``data`` to a temporary file in one call, fsync it, rename it into place and
        fsync the directory: once this returns, the object is durable. Returns its size."""
        final, tmp = _tmp(self.path(key))
        view = memoryview(data)
        size = len(view)
        with _or_cannot_write(tmp, final):
            fd = _create(tmp)
            try:
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        _rename(tmp, final)
        return size

    def stage_table(self, key: str, schema: pa.Schema, **options: Any) -> StagedTable:
        """A Parquet file written a row group at a time, that appears whole on ``publish``."""
        final, tmp = _tmp(self.path(key))
        try:
            os.close(_create(tmp))  # the file exists now: its directory cannot be pruned
            sink = pa.BufferedOutputStream(pa.OSFile(str(tmp), "wb"), BUFFER)
            writer = pq.ParquetWriter(sink, schema, **options)
        except OSError as e:
            raise _cannot_write(final, e) from None

        def publish() -> int:
            writer.close()
            size = sink.tell()
            sink.close()
            with _or_cannot_write(tmp, final), open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _rename(tmp, final)
            return int(size)

        def discard() -> None:
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(Exception):
                sink.close()
            with contextlib.suppress(OSError):
                tmp.unlink()

        return StagedTable(writer, publish, discard, f"{final}")

    def move(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst`` (which appears whole, replacing what was there), durably."""
        final = self.path(dst)
        final.parent.mkdir(parents=True, exist_ok=True)
        _rename(self.path(src), final)
        _fsync_dir(self.path(src).parent)

    def delete(self, key: str) -> None:
        """Remove ``key``, and its directories once empty (a day's staging area, the day
        locks): a folded lake holds no empty directories."""
        path = self.path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent
        if self._made_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def keys(self, prefix: str) -> list[str]:
        """Every file under ``prefix`` ("": the whole lake), as keys."""
        base = self.path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def has_data(self) -> bool:
        return self.root.is_dir() and any(p.name.startswith("date=") for p in self.root.iterdir())

    def create_exclusive(self, key: str, data: bytes, replacing: bytes | None = None) -> bool:
        """Create ``key`` holding ``data`` unless it exists (False then); given ``replacing``,
        replace it instead, only while it still holds exactly those bytes (False otherwise).
        Replacements hold an exclusive ``flock`` on the lake's directory, so two takers
        replacing one stale lock do it one after the other and the second finds the first's
        lock; the kernel lets go of it when its process dies. The data is written to a
        temporary file first and linked into place: the file never exists empty."""
        if replacing is None:
            return _link_new(self.path(key), data)
        with _flocked(self.root):
            if self.read(key) != replacing:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path(key).unlink()
            return _link_new(self.path(key), data)

    def cleanup(self, mine: Callable[[str], bool]) -> int:
        """Delete temporary files left by a killed run, of the keys ``mine`` says this run
        owns (a run of one part of a plan leaves the other parts' files alone)."""
        n = 0
        for pattern in ("date=*/.*.tmp", "_staging/date=*/.*.tmp", "_manifest/.*.tmp", ".*.tmp"):
            for p in self.root.glob(pattern):
                final = p.with_name(p.name[1:].rsplit(".", 2)[0])  # .<name>.<pid>-<thread>.tmp
                if mine(final.relative_to(self.root).as_posix()):
                    with contextlib.suppress(OSError):
                        p.unlink()
                        n += 1
        return n


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


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_new(final: Path, data: bytes) -> bool:
    """``final`` created holding ``data`` (written whole, then linked), or False if it exists."""
    final, tmp = _tmp(final)
    try:
        with _or_cannot_write(tmp, final):
            fd = _create(tmp)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return True


@contextlib.contextmanager
def _flocked(directory: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``directory`` (none where the system or filesystem has none)."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock (some NFS): unserialised
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # lets go of the flock


def _create(tmp: Path) -> int:
    """Create (or truncate) a temporary file for writing, making its directory: on its
    first file, or when a clean-up removed it as empty in between (see ``delete``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    for _ in range(4):
        try:
            return os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            tmp.parent.mkdir(parents=True, exist_ok=True)
    return os.open(tmp, flags, 0o644)


def _tmp(final: Path) -> tuple[Path, Path]:
    """A file's final path and the hidden temporary name it is written under."""
    # The thread too: two threads of one run may write one key (two takers of a day's lock).
    return final, final.with_name(f".{final.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def _rename(tmp: Path, final: Path) -> None:
    """Rename a temporary file into place, then fsync the directory."""
    with _or_cannot_write(tmp, final):
        crash_point("before-rename")
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        crash_point("after-rename")


def _check_usable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {root} exists and is not a directory: choose another path")
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {root} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {root} is not writable (no write permission on {probe})")
