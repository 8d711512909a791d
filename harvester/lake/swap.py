"""A local day directory replaced in one step, for ``compact``.

Turning a day's N files into one cannot be done by renaming files: a reader listing the day
between two renames sees either both copies of some rows or neither. What can be done in one
step is exchanging two directories (Linux ``renameat2(RENAME_EXCHANGE)``, which the standard
library does not offer; the ``renameat2`` package wraps the system call). The new day
directory is put together *beside* the lake, in ``.<lake>.compacting/``, because a reader's
``**/*.parquet`` glob (DuckDB's) finds a Parquet file anywhere under the lake, hidden
directories included. After the exchange, the day's old files are in that side directory
and are deleted there, where no reader looks.

Where the exchange cannot be done (not Linux, a side directory that cannot be made, a
filesystem that refuses it), :class:`DaySwap` says why and ``compact`` falls back to
putting the new file in place before removing the old ones.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from harvester.lake.crashpoints import crash_point
from harvester.lake.store import check_key

try:
    from renameat2 import exchange
except (ImportError, RuntimeError):  # not Linux, or a kernel before 3.15: no exchange
    exchange = None


class DaySwap:
    """Exchanges day directories of the lake at ``root`` with ones built beside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # "." or "lake/..": beside the lake, never inside it
        self.side = self.root.parent / f".{self.root.name}.compacting"
        self.why_not: str | None = None  # set once the exchange is found unusable
        if exchange is None:
            self.why_not = "this system has no atomic exchange of directories (renameat2 needs Linux)"
        else:
            self._clear()

    def _clear(self) -> None:
        """Remove what a killed ``compact`` left in the side directory (a day's old files,
        or a new file never exchanged), then make it afresh."""
        try:
            if self.side.is_symlink() or (self.side.exists() and self.side.stat().st_uid != os.geteuid()):
                self.why_not = f"{self.side} exists and is not compact's working directory"
                return
            if self.side.is_dir():
                for day in self.side.iterdir():
                    if day.is_dir() and day.name.startswith("date="):
                        _empty(day)
                self.side.rmdir()
            self.side.mkdir(mode=0o700)
        except OSError as e:
            self.why_not = f"{self.side} cannot be used as compact's working directory ({e.strerror or e})"

    def swap(self, prefix: str, new_key: str | None, name: str) -> bool:
        """Make the lake's directory ``prefix`` hold only ``new_key``'s file, named ``name``
        (nothing when ``new_key`` is None), in one step. The file was fsynced when written.
        False (and :attr:`why_not` set) when the exchange cannot be done: ``new_key`` is then
        where it was and the lake unchanged."""
        if self.why_not is not None:
            return False
        day = self.root / check_key(prefix)
        built = self.side / check_key(prefix)
        new = self.root / check_key(new_key) if new_key else None
        if new is None and not day.is_dir():
            return True  # no rows, and no directory to take away
        try:
            built.mkdir()
            if new is not None:
                os.rename(new, built / name)
                _fsync(built)
            if day.is_dir():
                exchange(built, day)
            else:
                os.rename(built, day)  # no day there yet: the new one appears whole
        except OSError as e:  # e.g. EINVAL: this filesystem does not exchange directories
            self.why_not = f"{self.root} could not exchange a day's directory ({e.strerror or e})"
            with contextlib.suppress(OSError):
                if new is not None and not new.exists():
                    os.rename(built / name, new)
                built.rmdir()
            return False
        with contextlib.suppress(OSError):
            _fsync(self.root)
        crash_point("after-swap")
        _empty(built)  # the day's old files, where no reader looks
        if new is not None:  # its folder in the lake, now empty
            with contextlib.suppress(OSError):
                new.parent.rmdir()
                new.parent.parent.rmdir()
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.side.rmdir()


def _empty(directory: Path) -> None:
    """Delete a day directory of the side directory: its files, then itself."""
    with contextlib.suppress(OSError):
        for f in directory.iterdir():
            f.unlink()
        directory.rmdir()


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
