"""Page bytes → an Arrow record batch plus the page's ``pagination`` and ``summary``.

The hot path is columnar: one ``itemgetter`` pass turns the page's records into 43 columns,
each column is built by Arrow in one call, and timestamps are parsed by Arrow, not Python.
Only a column whose values do not fit its type takes the slow, per-value path, which
coerces what it can and keeps the raw value of anything it cannot in ``_extra``: a record
never makes the harvest fail, and nothing the API sent is lost.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from harvester.schema import ARROW_TYPES, FIELD_NAMES, FIELDS, KNOWN, SCHEMA, TIMESTAMP

_GETTERS = [itemgetter(name) for name in FIELD_NAMES]
_UUID = FIELD_NAMES.index("uuid")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


class DecodeError(ValueError):
    """The body is not a CDR page (not JSON, truncated, wrong shape): worth a retry."""


@dataclass(frozen=True)
class Columns:
    """Records transposed into one list per schema field, plus any unknown fields per row.

    Transposing right after ``orjson.loads``, while the page's dicts are still in the CPU
    cache, costs a fraction of doing it later for a whole shard.
    """

    values: list[list[Any]]
    unknown: list[dict[str, Any] | None] | None  # None: no row has an unknown field
    rows: int


@dataclass(frozen=True)
class Page:
    """One decoded list page: its records as columns, and the API's own numbers."""

    columns: Columns
    page: int
    per_page: int
    total: int
    pages: int
    has_next: bool
    summary: dict[str, Any] | None

    @property
    def rows(self) -> int:
        return self.columns.rows

    @property
    def uuids(self) -> list[Any]:
        return self.columns.values[_UUID]


class Collector:
    """Gathers a shard's pages and turns them into Arrow in large chunks.

    Building Arrow arrays has a fixed cost per call, so converting 2,000 records at once is
    far cheaper than converting each page of 100; only one chunk's Python values are alive
    at a time, the rest of the shard is compact Arrow already.
    """

    CHUNK = 2000

    def __init__(self, track_uuids: bool = False) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.pages = 0
        self.seen: set[Any] | None = set() if track_uuids else None
        self._reset()

    def _reset(self) -> None:
        self._values: list[list[Any]] = [[] for _ in FIELDS]
        self._unknown: list[dict[str, Any] | None] | None = None
        self._rows = 0

    def add(self, page: Page) -> int:
        """Add a page; returns how many of its uuids were new (when tracking uuids)."""
        self.pages += 1
        cols = page.columns
        if cols.unknown is not None or self._unknown is not None:
            if self._unknown is None:
                self._unknown = [None] * self._rows
            self._unknown.extend(cols.unknown or [None] * cols.rows)
        for acc, part in zip(self._values, cols.values, strict=True):
            acc.extend(part)
        self._rows += cols.rows
        fresh = 0
        if self.seen is not None:
            before = len(self.seen)
            self.seen.update(page.uuids)
            fresh = len(self.seen) - before
        if self._rows >= self.CHUNK:
            self.flush()
        return fresh

    def flush(self) -> None:
        if self._rows:
            self.batches.append(columns_to_batch(Columns(self._values, self._unknown, self._rows)))
            self._reset()

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=SCHEMA)


def loads(body: bytes) -> Any:
    """orjson, with failures turned into :class:`DecodeError`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"body is not JSON ({len(body)} bytes): {e}") from None


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def decode_page(body: bytes, asked_page: int, asked_per_page: int) -> Page:
    """Decode one CDR list page; raises :class:`DecodeError` when it is not one."""
    doc = loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DecodeError("body has no 'data' list")
    if doc.get("success") is False:
        raise DecodeError("body says success=false")
    data = doc["data"]
    pag = doc.get("pagination")
    pag = pag if isinstance(pag, dict) else {}
    per_page = _int(pag.get("per_page"), asked_per_page) or asked_per_page
    total = _int(pag.get("total"), -1)
    page = _int(pag.get("page"), asked_page)
    if total < 0:
        raise DecodeError("body has no pagination.total")
    pages = max(_int(pag.get("pages"), 0), math.ceil(total / per_page) if per_page else 0)
    has_next = bool(pag.get("has_next", page < pages))
    summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else None
    return Page(transpose(data), page, per_page, total, pages, has_next, summary)


def transpose(records: list[Any]) -> Columns:
    """CDR dicts → one list per schema field, and the fields the schema does not know."""
    if not all(type(r) is dict for r in records):
        raise DecodeError("a record in 'data' is not an object")
    n = len(records)
    complete = True
    try:
        values = [list(map(get, records)) for get in _GETTERS]
    except KeyError:  # a record lacks a documented field: slower, lenient path
        complete = False
        values = [[r.get(name) for r in records] for name in FIELD_NAMES]
    # With every known key present (or the getters raised), a record has an unknown key iff
    # it has more than 43: one C-level sum instead of a set union over every record.
    unknown: list[dict[str, Any] | None] | None = None
    if not complete or sum(map(len, records)) != len(FIELD_NAMES) * n:
        extra_keys = set().union(*records) - KNOWN
        if extra_keys:
            unknown = [{k: r[k] for k in extra_keys if k in r} or None for r in records]
    return Columns(values, unknown, n)


def columns_to_batch(cols: Columns) -> pa.RecordBatch:
    """Transposed records → one record batch of :data:`harvester.schema.SCHEMA`."""
    n = cols.rows
    if n == 0:
        return _EMPTY
    extras: dict[int, dict[str, Any]] = {}
    if cols.unknown is not None:
        extras = {i: dict(u) for i, u in enumerate(cols.unknown) if u}
    arrays = [_column(name, kind, col, extras) for (name, kind), col in zip(FIELDS, cols.values, strict=True)]
    if extras:
        extra_col = [
            orjson.dumps(extras[i], option=orjson.OPT_SORT_KEYS).decode() if i in extras else None
            for i in range(n)
        ]
        arrays.append(pa.array(extra_col, pa.string()))
    else:
        arrays.append(pa.nulls(n, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def records_to_batch(records: list[Any]) -> pa.RecordBatch:
    """CDR dicts → one record batch of :data:`harvester.schema.SCHEMA`."""
    return columns_to_batch(transpose(records))


_EMPTY = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in SCHEMA], schema=SCHEMA)


def _column(name: str, kind: str, values: Sequence[Any], extras: dict[int, dict[str, Any]]) -> pa.Array:
    """Build one column fast; fall back to per-value coercion if the values do not fit."""
    typ = ARROW_TYPES[kind]
    try:
        if typ == TIMESTAMP:
            return pc.cast(pa.array(values, pa.string()), TIMESTAMP)
        if kind == "int":
            # Inferred, not forced: pa.array(values, int64) would silently truncate 1.5 to 1.
            arr = pa.array(values)
            if arr.type == typ:
                return arr
            if arr.type == pa.null():
                return arr.cast(typ)
        else:
            return pa.array(values, typ)
    except _ARROW_ERRORS:
        pass
    coerce = _COERCE[kind]
    out: list[Any] = []
    for i, v in enumerate(values):
        c = coerce(v)
        if c is _LOST:
            extras.setdefault(i, {})[name] = v
            c = None
        out.append(c)
    return pa.array(out, typ)


_LOST = object()


def _to_int(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else _LOST
    if isinstance(v, float):
        return int(v) if v.is_integer() else _LOST
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            f = _to_float(v)
            return int(f) if isinstance(f, float) and f.is_integer() else _LOST
    return _LOST


def _to_float(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return _LOST
    return _LOST


def _to_str(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float, bool)):
        return orjson.dumps(v).decode()
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()


def _to_ts(v: Any) -> Any:
    if v is None or v == "":
        return None
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            secs = v / 1000 if v > 1e11 else v  # epoch seconds or milliseconds
            return dt.datetime.fromtimestamp(secs, dt.UTC)
        if isinstance(v, str):
            t = dt.datetime.fromisoformat(v.strip())
            return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return _LOST


_COERCE = {"int": _to_int, "float": _to_float, "str": _to_str, "ts": _to_ts}


def decode_json(body: bytes) -> Any:
    """A JSON body of any shape (accounts listing, single CDR)."""
    return loads(body)
