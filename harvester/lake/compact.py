"""``vobiz-harvest compact``: convert a lake of the earlier layout (format 1: one file and one
manifest record per customer-day) to one file per day (format 2, :mod:`harvester.lake.days`).

Day by day, under the lake's lock (and every part's lock, so no harvest runs meanwhile):

1. the day's committed shards (those with a record) are written into the day's file, which
   appears whole, with its map of blocks;
2. the day's manifest document is written;
3. the day's old files and records are removed (files of shards that were never committed
   are removed too: no reader was meant to count them).

Once every day is converted, ``_lake.json`` says format 2. A kill at any point leaves a lake
that ``compact`` finishes when run again (a day whose new file and document exist is only
cleaned up); running it on a converted lake changes nothing.

Readers: on a local directory (Linux) a day's new file is built where no reader looks and
the day's directory is exchanged for one holding only it, in one step
(:mod:`harvester.lake.swap`): a reader sees the old files or the new one, never both, never
neither. Where that cannot be done (an object store, which has no multi-object step; a
filesystem that refuses the exchange), the new file appears first and the old files are
deleted right after, so a reader listing the day in those milliseconds can count it twice:
``compact`` then says so (:attr:`Compacted.not_atomic`). Every later rewrite of a day is a
single atomic replace.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from harvester.errors import UsageError, shown
from harvester.lake import days
from harvester.lake.identity import KEY as IDENTITY
from harvester.lake.local import LocalStore
from harvester.lake.lock import LakeLock
from harvester.lake.store import Store, read_json
from harvester.lake.swap import DaySwap

log = logging.getLogger("harvester.lake.compact")
_OLD_RECORD = re.compile(r"_manifest/date=(\d{4}-\d{2}-\d{2})/(.+)\.json")
_OLD_FILE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/cdr-(.+)\.parquet")
_BUILD = "_compact"  # where a day's new file is built before it is swapped in (no .parquet name)
_OBJECTS = "an object store cannot replace several objects in one step"


@dataclass
class Compacted:
    """What ``compact`` did."""

    days: int = 0  # days converted
    shards: int = 0  # committed shards carried into day files
    rows: int = 0
    files_before: int = 0
    files_after: int = 0
    dropped: list[str] = field(default_factory=list)  # shards whose record lost its file
    already: bool = False  # the lake was in the current layout already
    swapped: int = 0  # days whose directory was exchanged in one step
    not_atomic: str | None = None  # why some day's old and new files were both visible a moment


def compact(store: Store) -> Compacted:
    """Convert the lake on ``store`` (see the module docstring). :class:`UsageError` for a
    lake of another format; :class:`LakeError` when a run holds it."""
    where = store.where
    store.check_usable()
    ident = read_json(store, IDENTITY)
    if ident is None:
        raise UsageError(f"--out {where} holds no {IDENTITY}: it is not a lake vobiz-harvest wrote")
    fmt = ident.get("format")
    if fmt not in (1, 2):
        raise UsageError(
            f"--out {where} is a lake of format {shown(fmt)}, which this release cannot convert: "
            "use the release that wrote it"
        )
    locks = [LakeLock(store)]
    locks += [LakeLock(store, k) for k in store.keys("_locks") if k.startswith("_locks/part-")]
    try:
        for lock in locks:
            lock.acquire()  # a live run: LakeError (exit 4), nothing changed
        done = Compacted(already=fmt == 2)
        for key in store.keys(_BUILD):  # a day file a killed compact never swapped in
            store.delete(key)
        old = _old_layout(store)
        swap = DaySwap(store.root) if old and isinstance(store, LocalStore) else None
        try:
            for day in sorted(old):
                _convert(store, day, old[day], done, swap)
        finally:
            if swap is not None:
                swap.close()
        if fmt == 1:
            doc = {**ident, "format": 2}
            store.write(IDENTITY, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        done.already = fmt == 2 and not old
        done.files_after = sum(1 for k in store.keys("") if k.startswith("date=") and k.endswith(".parquet"))
        return done
    finally:
        for lock in locks:
            lock.release()


def _old_layout(store: Store) -> dict[dt.date, dict[str, list[str]]]:
    """Days holding format-1 keys: day → {"records": [...], "files": [...]}."""
    found: dict[dt.date, dict[str, list[str]]] = {}
    for kind, prefix, pattern in (("records", "_manifest", _OLD_RECORD), ("files", "", _OLD_FILE)):
        for key in store.keys(prefix):
            if m := pattern.fullmatch(key):
                day = dt.date.fromisoformat(m.group(1))
                found.setdefault(day, {"records": [], "files": []})[kind].append(key)
    return found


def _convert(
    store: Store, day: dt.date, old: dict[str, list[str]], done: Compacted, swap: DaySwap | None
) -> None:
    """One day: its file and document from the old files and records, the file swapped in,
    then the old removed. A day whose document and file exist was converted by a killed
    ``compact``: only cleaned up."""
    files = {m.group(2): key for key in old["files"] if (m := _OLD_FILE.fullmatch(key))}
    done.files_before += len(files)
    doc = read_json(store, days.day_doc(day))
    in_place = doc is not None and (not doc.get("file") or days.day_file(day) in store.keys(f"date={day}"))
    if not in_place:
        carried: dict[str, dict[str, Any]] = {}
        for key in old["records"]:
            m = _OLD_RECORD.fullmatch(key)
            rec = read_json(store, key)
            if m is None or rec is None:
                continue
            who = m.group(2)
            if rec.get("rows") and who not in files:
                done.dropped.append(f"{day}/{who}")  # its file is gone: the next run harvests it
                continue
            carried[who] = rec
        with_rows = {who: files[who] for who, rec in carried.items() if rec.get("rows")}
        _write(store, day, with_rows, carried, bool(files), swap, done)
        done.days += 1
        done.shards += len(carried)
        done.rows += sum(int(r.get("rows") or 0) for r in carried.values())
    # Files first: a record without its file is dropped above, never trusted.
    for key in sorted(files.values()) + sorted(old["records"]):
        store.delete(key)


def _write(
    store: Store,
    day: dt.date,
    with_rows: dict[str, str],
    carried: dict[str, dict[str, Any]],
    had_files: bool,
    swap: DaySwap | None,
    done: Compacted,
) -> None:
    """The day's new file and document. Where ``swap`` can, the file is built out of sight
    and the day's directory exchanged for it in one step; else it appears in place before
    the old files are removed. The document is written before the swap: a kill in between
    leaves a document without its file, a day the next ``compact`` converts again."""
    final = days.day_file(day)
    if swap is None or swap.why_not is not None:
        days.write_day(store, day, with_rows, carried, final)
    else:
        built = f"{_BUILD}/date={day}/cdr.parquet.new"
        rows = days.write_day(store, day, with_rows, carried, built)
        if swap.swap(f"date={day}", built if rows else None, "cdr.parquet"):
            done.swapped += 1
            return
        if rows:
            store.move(built, final)  # the exchange failed: the new file first, then the old go
    if had_files:
        done.not_atomic = swap.why_not if swap is not None else _OBJECTS
