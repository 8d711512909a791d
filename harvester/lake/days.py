"""A day of the lake: one Parquet file holding every committed shard of the day.

A shard is committed into the staging area, which readers never see (its names start with
``_`` and no staged file ends in ``.parquet``)::

    _staging/date=D/<who>.staged    the shard's rows (a Parquet file; none when it has none)
    _staging/date=D/<who>.json      its record: written last, the shard's commit point

:func:`fold` then makes the day's file hold the staged shards: it writes a new file from
the current one (minus the staged shards' earlier rows) and the staged rows, swaps it in
whole (a rename, or one object PUT), records the day in ``_manifest/date=D.json``, and only
then removes what it folded. A kill at any point leaves either the staged shards or the
folded file, never neither, and the next fold finishes the job (it is idempotent).

The day file carries its own map of which rows belong to which shard (``vobiz.blocks`` in
its footer: ``[[who, rows], ...]`` in file order), so a fold never depends on a manifest
being in step with the file. Blocks are in ``who`` order and each block keeps the API's
order, so a file is sorted by account, then newest call first, and a per-customer filter
prunes row groups by ``account_id``'s statistics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvester.errors import StorageError
from harvester.lake.crashpoints import crash_point
from harvester.lake.store import Store, read_json, short
from harvester.records.encoding import WRITE_OPTIONS
from harvester.records.schema import SCHEMA

BLOCKS = b"vobiz.blocks"
FEED = "global"  # the block of a day fetched through the global partner feed
STAGED = ".staged"


def day_file(day: dt.date) -> str:
    return f"date={day.isoformat()}/cdr.parquet"


def day_doc(day: dt.date) -> str:
    return f"_manifest/date={day.isoformat()}.json"


def staged_data(day: dt.date, who: str) -> str:
    return f"_staging/date={day.isoformat()}/{who}{STAGED}"


def staged_record(day: dt.date, who: str) -> str:
    return f"_staging/date={day.isoformat()}/{who}.json"


def read_day(
    store: Store, day: dt.date, data_keys: set[str], staged_keys: list[str]
) -> dict[str, dict[str, Any]]:
    """A day's committed records by ``who``: its manifest document's (the folded shards,
    pointing at the day file) overlaid by the staged ones (committed, not yet folded), each
    with ``"file_missing"`` where its rows are gone. ``data_keys`` are the day's data files
    present (``date=D/...``), ``staged_keys`` the day's staging listing."""
    doc = read_json(store, day_doc(day)) or {}
    records: dict[str, dict[str, Any]] = {}
    for who, rec in (doc.get("shards") or {}).items():
        if isinstance(rec, dict):
            records[who] = {**rec, "file_missing": bool(rec.get("rows")) and day_file(day) not in data_keys}
    present = set(staged_keys)
    in_file: dict[str, int] | None = None  # the day file's blocks, read only when needed
    for who, rec in _staged_records(store, staged_keys).items():
        gone = bool(rec.get("rows")) and not rec.get("in_day") and staged_data(day, who) not in present
        if gone and day_file(day) in data_keys:
            # A fold that renamed this shard's file into the day's was stopped before it
            # recorded the day: the rows are in the day's file, whose map says so.
            if in_file is None:
                in_file = dict(_blocks_or_none(_open(store, day_file(day))) or [])
            gone = in_file.get(who) != rec.get("rows")
        records[who] = {**rec, "file_missing": gone}
    return records


def _staged_records(store: Store, staged_keys: list[str]) -> dict[str, dict[str, Any]]:
    """The staged records among a day's staging keys, by ``who`` (a torn one is absent)."""
    found: dict[str, dict[str, Any]] = {}
    for key in staged_keys:
        if key.endswith(".json") and (rec := read_json(store, key)) is not None:
            found[key.rsplit("/", 1)[1].removesuffix(".json")] = rec
    return found


def fold(store: Store, day: dt.date, failed: dict[str, str], cleared: set[str]) -> bool:
    """Fold the day's staged shards into its file and manifest (see the module docstring).
    ``failed`` are shards this run failed, ``cleared`` shards it finished otherwise (the
    manifest's list of failures drops them). Returns whether anything changed. The caller
    holds the day's lock."""
    doc = read_json(store, day_doc(day)) or {}
    keys = store.keys(f"_staging/date={day.isoformat()}")
    present = set(keys)
    staged = _staged_records(store, keys)
    old_failed: dict[str, str] = doc["failed"] if isinstance(doc.get("failed"), dict) else {}
    new_failed = {w: d for w, d in {**old_failed, **failed}.items() if w not in staged and w not in cleared}
    if not staged and new_failed == old_failed:
        return False
    old = _open(store, day_file(day))
    old_blocks = _blocks(old)
    feed_staged = FEED in staged and staged[FEED].get("rows") is not None and not staged[FEED].get("in_day")
    sources: dict[str, _Source] = {}
    for who, rows in old_blocks:
        rec = staged.get(who)
        keep = rec is None or rec.get("in_day") or (rec.get("rows") and staged_data(day, who) not in present)
        if keep and not (feed_staged and who != FEED):
            sources[who] = _Source(old_rows=rows)
    for who, rec in staged.items():
        if rec.get("rows") and not rec.get("in_day") and staged_data(day, who) in present:
            sources[who] = _Source(staged=staged_data(day, who))
    # Customers fetched on their own replace their rows in a day fetched through the feed.
    if FEED in sources and len(sources) > 1:
        sources[FEED].drop_accounts = {w for w in sources if w != FEED}
    blocks = _take_whole(store, day, old, sources) or _write_day(store, day, old, old_blocks, sources)
    crash_point("after-day-file")
    shards = {} if feed_staged else dict(doc.get("shards") or {})
    shards = {w: r for w, r in shards.items() if w in sources or not r.get("rows")}
    for who, rec in staged.items():
        if rec.get("rows") and who not in sources:
            continue  # its rows are lost (a staged file gone): the next run harvests it again
        shards[who] = rec
    _write_doc(store, day, blocks, shards, new_failed)
    crash_point("after-day-doc")
    for who in staged:  # a staged file before its record: a record never outlives a file unread
        store.delete(staged_data(day, who))
        store.delete(staged_record(day, who))
    return True


def _take_whole(
    store: Store, day: dt.date, old: pq.ParquetFile | None, sources: dict[str, _Source]
) -> list[tuple[str, int]]:
    """A new day of one staged shard whose file is labelled as one block (a day of the
    partner feed, usually): that file becomes the day's file by a rename (a server-side
    copy on an object store), without being read and written again. [] when it does not
    apply."""
    if old is not None or len(sources) != 1:
        return []
    ((who, src),) = sources.items()
    if src.staged is None or src.drop_accounts:
        return []
    pf = _open(store, src.staged)
    if pf is None or _blocks_or_none(pf) != [(who, pf.metadata.num_rows)]:
        return []
    store.move(src.staged, day_file(day))
    return [(who, pf.metadata.num_rows)]


def _blocks_or_none(pf: pq.ParquetFile | None) -> list[tuple[str, int]] | None:
    try:
        return _blocks(pf)
    except StorageError:
        return None


def write_day(
    store: Store, day: dt.date, files: dict[str, str], records: dict[str, dict[str, Any]], into: str
) -> bool:
    """A day's file made from whole Parquet files (``who`` → key, one per shard) and written
    to ``into`` (the day's file, or where ``compact`` builds it), then the day's manifest
    document holding ``records``. Returns whether the day has rows (a file)."""
    sources = {who: _Source(staged=key) for who, key in files.items()}
    blocks = _write_day(store, day, None, [], sources, into)
    _write_doc(store, day, blocks, records, {})
    return bool(blocks)


def _write_doc(
    store: Store,
    day: dt.date,
    blocks: list[tuple[str, int]],
    shards: dict[str, dict[str, Any]],
    failed: dict[str, str],
) -> None:
    """The day's manifest document: every folded shard's record, what failed, and whether
    the day is complete (no failure, every shard verified)."""
    for who, rec in list(shards.items()):
        shards[who] = {k: v for k, v in rec.items() if k not in ("in_day", "file_missing")}
        shards[who]["file"] = day_file(day) if rec.get("rows") else None
    complete = not failed and all(r.get("verified") for r in shards.values())
    record = {"format": 2, "date": day.isoformat(), "file": day_file(day) if blocks else None}
    record |= {"rows": sum(n for _, n in blocks), "complete": complete, "failed": failed}
    record["shards"] = dict(sorted(shards.items()))
    store.write(day_doc(day), orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


@dataclass
class _Source:
    """Where a block of the new day file comes from."""

    old_rows: int | None = None  # rows of the current day file's block
    staged: str | None = None  # a staged file's key
    drop_accounts: set[str] | None = None  # feed rows of these accounts are replaced


def _open(store: Store, key: str) -> pq.ParquetFile | None:
    """A Parquet file of the lake, its footer read (its row groups are read when asked)."""
    f = store.open_file(key)
    if f is None:
        return None
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        f.close()
        raise StorageError(f"{store.where}/{key} is not a readable Parquet file: {short(e)}") from None


def _blocks(pf: pq.ParquetFile | None) -> list[tuple[str, int]]:
    """The day file's map of blocks (none without a file); a file without a map was not
    written by this harvester: :class:`StorageError`."""
    if pf is None:
        return []
    meta = pf.metadata.metadata or {}
    if BLOCKS in meta:
        return [(str(w), int(n)) for w, n in orjson.loads(meta[BLOCKS])]
    raise StorageError("a day file without its map of shards: it was not written by this harvester")


def block_label(who: str, rows: int) -> dict[bytes, bytes]:
    """The footer metadata of a staged shard's file: one block, so that a day whose only
    shard it is can take the file as it is (see :func:`fold`)."""
    return {BLOCKS: orjson.dumps([[who, rows]])}


def _write_day(
    store: Store,
    day: dt.date,
    old: pq.ParquetFile | None,
    old_blocks: list[tuple[str, int]],
    sources: dict[str, _Source],
    into: str | None = None,
) -> list[tuple[str, int]]:
    """Write the new day file (blocks in ``who`` order) and swap it in (at ``into``, the day's
    file unless said); delete it when the day has no rows. Returns the new map of blocks.
    Staged files are held compressed and decoded a row group at a time, so memory follows a
    row group, not the day."""
    offsets: dict[str, int] = {}
    at = 0
    for who, rows in old_blocks:
        offsets[who] = at
        at += rows
    parts: dict[str, Callable[[], Iterator[pa.Table]]] = {}
    blocks: list[tuple[str, int]] = []
    for who in sorted(sources):
        src = sources[who]
        if src.staged is not None:
            pf = _open(store, src.staged)
            if pf is None:
                raise StorageError(f"{store.where}/{src.staged} vanished while the day was folded")
            n, parts[who] = pf.metadata.num_rows, _groups(pf, 0, pf.metadata.num_rows)
        else:
            n, parts[who] = int(src.old_rows or 0), _groups(old, offsets[who], int(src.old_rows or 0))
        if src.drop_accounts:  # a feed block losing the rows of customers fetched on their own
            drop = pa.array(sorted(src.drop_accounts), pa.string())
            kept = [
                t.filter(pc.invert(pc.fill_null(pc.is_in(t.column("account_id"), drop), False)))
                for t in parts[who]()
            ]
            n, parts[who] = sum(t.num_rows for t in kept), _held(kept)
        if n:
            blocks.append((who, n))
    into = into or day_file(day)
    if not blocks:
        store.delete(into)
        return []
    schema = SCHEMA.with_metadata({BLOCKS: orjson.dumps(blocks)})
    options = {k: v for k, v in WRITE_OPTIONS.items() if k != "row_group_size"}
    out = store.stage_table(into, schema, **options)
    try:
        buffer = _RowGroups(out.write, int(WRITE_OPTIONS["row_group_size"]))
        for who, _ in blocks:
            for t in parts[who]():
                buffer.add(t.replace_schema_metadata(None).cast(SCHEMA))
        buffer.flush()
    except BaseException:
        out.discard()
        raise
    out.publish()
    return blocks


def _held(tables: list[pa.Table]) -> Callable[[], Iterator[pa.Table]]:
    return lambda: iter(tables)


def _groups(pf: pq.ParquetFile | None, start: int, rows: int) -> Callable[[], Iterator[pa.Table]]:
    """Rows ``start`` .. ``start + rows`` of a Parquet file, read a row group at a time."""

    def read() -> Iterator[pa.Table]:
        if pf is None or rows <= 0:
            return
        at = 0
        for i in range(pf.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            lo, hi = max(start, at), min(start + rows, at + n)
            if lo < hi:
                try:
                    group = pf.read_row_group(i)
                except (pa.ArrowException, OSError) as e:
                    raise StorageError(f"reading a row group of a file of the day: {short(e)}") from None
                yield group.slice(lo - at, hi - lo)
            at += n
            if at >= start + rows:
                return

    return read


class _RowGroups:
    """Gathers small blocks into row groups of ``size`` rows (a row group per tiny block
    would make the footer, not the data, the file)."""

    def __init__(self, write: Any, size: int) -> None:
        self.write, self.size = write, size
        self.held: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        while table.num_rows:
            take = min(table.num_rows, self.size - self.rows)
            self.held.append(table.slice(0, take))
            self.rows += take
            table = table.slice(take)
            if self.rows >= self.size:
                self.flush()

    def flush(self) -> None:
        if self.rows:  # one row group; its chunks are written as they are, not copied together
            self.write(pa.concat_tables(self.held))
        self.held, self.rows = [], 0
