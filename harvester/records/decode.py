"""Page bytes → Arrow, plus the page's ``pagination`` and ``summary``.

The hot path never builds a Python list per field. Right after ``orjson.loads`` a page's
records go to Arrow in one call, a struct array read straight from the dicts in C++, with
timestamps still text and integers as float64 (:class:`Part`). A shard's parts are then
joined and cast to the schema's types in one call per chunk of rows (:func:`finish`):
Arrow parses the timestamps, and a per-call cost is paid per chunk, not per page.

Only values that do not fit their type take the slow, per-value path, which coerces what it
can and keeps the raw value of anything it cannot in ``_extra``: a record never makes the
harvest fail, and nothing the API sent is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from harvester.errors import BadResponse, DecodeError, shown
from harvester.records.schema import ARROW_TYPES, FIELD_NAMES, FIELDS, INT, KNOWN, SCHEMA, TIMESTAMP, TS

_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)

# What the fast path asks Arrow for: timestamps as text (parsed by the cast in ``finish``),
# integers as float64. pyarrow silently truncates 1.5 to 1 when it builds int64 from a Python
# float; as float64, an integer beyond 2**53 is refused by the conversion and a fraction by
# the (safe) cast to int64, so every value is either exact or goes the per-value path.
RAW = pa.struct(
    [
        pa.field(name, pa.string() if kind == TS else pa.float64() if kind == INT else ARROW_TYPES[kind])
        for name, kind in FIELDS
    ]
)
_TARGET = pa.struct([pa.field(name, ARROW_TYPES[kind]) for name, kind in FIELDS])


@dataclass(frozen=True)
class Part:
    """Some records in Arrow: the fast path's :data:`RAW` struct and each row's unknown
    fields (None: no row has one), or ``done``, a finished batch of records the fast path
    refused (e.g. a number where a string belongs)."""

    rows: int
    raw: pa.StructArray | None = None
    unknown: list[dict[str, Any] | None] | None = None
    done: pa.RecordBatch | None = None

    @property
    def uuids(self) -> list[Any]:
        return self.values("uuid")

    def values(self, name: str) -> list[Any]:
        """One field of every record (as decoded, before the final cast)."""
        i = FIELD_NAMES.index(name)
        if self.done is not None:
            return self.done.column(i).to_pylist()
        return self.raw.field(i).to_pylist() if self.raw is not None else []


@dataclass(frozen=True)
class Page:
    """One decoded list page: its records, and the API's own numbers."""

    part: Part
    page: int
    per_page: int
    total: int
    pages: int
    has_next: bool
    summary: dict[str, Any] | None

    @property
    def rows(self) -> int:
        return self.part.rows

    @property
    def uuids(self) -> list[Any]:
        return self.part.uuids


class Collector:
    """Gathers a shard's pages. :meth:`table` joins them in page order, so a file's rows are
    in the API's own order (newest first) without a sort, and casts them a chunk of rows at
    a time: one cast per chunk, and the raw parts are released as their chunk is finished."""

    CHUNK = 8_192

    def __init__(self, track_uuids: bool = False) -> None:
        self.pages = 0
        self.seen: set[Any] | None = set() if track_uuids else None
        self._parts: list[tuple[int, int, Part]] = []  # (page number, arrival, part)

    def add(self, page: Page) -> int:
        """Add a page; returns how many of its uuids were new (when tracking uuids)."""
        self.pages += 1
        if page.rows:
            self._parts.append((page.page, self.pages, page.part))
        if self.seen is None:
            return 0
        before = len(self.seen)
        self.seen.update(page.uuids)
        return len(self.seen) - before

    def table(self) -> pa.Table:
        self._parts.sort(key=lambda item: item[:2])
        parts, self._parts = [part for _, _, part in self._parts], []
        parts.reverse()  # popped from the end: page order, each released once finished
        batches: list[pa.RecordBatch] = []
        pending: list[Part] = []
        rows = 0
        while parts:
            part = parts.pop()
            if part.done is None:
                pending.append(part)
                rows += part.rows
            if pending and (part.done is not None or rows >= self.CHUNK or not parts):
                batches.append(finish(pending))
                pending, rows = [], 0
            if part.done is not None:
                batches.append(part.done)
        return pa.Table.from_batches(batches, schema=SCHEMA)


def loads(body: bytes | bytearray) -> Any:
    """orjson, with failures turned into :class:`DecodeError`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise DecodeError(f"body is not JSON ({len(body)} bytes): {e}") from None


def check_shape(body: bytes) -> bytes:
    """``body`` if it can be a JSON object at all (``{`` first, ``}`` last, blanks around them
    allowed), else :class:`DecodeError`. A cheap look before a body goes to a decode worker,
    so that an HTML error page answered with 200 is fetched again at once, like any page that
    does not decode."""
    if not (_OPENS.match(body) and body.rstrip(b" \t\r\n").endswith(b"}")):
        raise DecodeError(f"body is not a JSON object ({len(body)} bytes)")
    return body


_OPENS = re.compile(rb"[ \t\r\n]*\{")
MAX_PER_PAGE = 1000  # a granted per_page past this is not a page size the API has
MAX_TOTAL = 100_000_000  # records in one shard (one customer-day, or the feed's day)


def _count(value: Any, name: str) -> int | None:
    """A count the page states: None when absent, else a non-negative int, else
    :class:`BadResponse` naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
        raise BadResponse(f"pagination.{name} {shown(value)} is not a count")
    return value


def decode_page(body: bytes | bytearray, asked_page: int, asked_per_page: int) -> Page:
    """Decode one CDR list page; raises :class:`DecodeError` when it is not one (worth
    another try) and :class:`BadResponse` when it is one that contradicts itself or states
    numbers no API page has (retrying will not change it).

    A page's own numbers must agree: ``per_page`` 1..1000, ``total`` at most
    :data:`MAX_TOTAL`, ``pages`` = ceil(total / per_page) when stated, and no more records
    than ``per_page``."""
    return _page(body, asked_page, asked_per_page, records=True)


def decode_numbers(body: bytes | bytearray, asked_page: int, asked_per_page: int) -> Page:
    """A page's own numbers, checked as :func:`decode_page` checks them, without converting
    its records (a probe of ``total``, a re-check of page 1)."""
    return _page(body, asked_page, asked_per_page, records=False)


def _page(body: bytes | bytearray, asked_page: int, asked_per_page: int, records: bool) -> Page:
    doc = loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DecodeError("body has no 'data' list")
    if doc.get("success") is False:
        raise DecodeError("body says success=false")
    data = doc["data"]
    pag = doc.get("pagination")
    pag = pag if isinstance(pag, dict) else {}
    total = _count(pag.get("total"), "total")
    if total is None:
        raise DecodeError("body has no pagination.total")
    per_page = _count(pag.get("per_page"), "per_page") or asked_per_page
    if per_page > MAX_PER_PAGE:
        raise BadResponse(f"pagination.per_page {per_page} is more than any API page holds")
    if total > MAX_TOTAL:
        raise BadResponse(f"pagination.total {total} is more records than one day of one shard can hold")
    if len(data) > per_page:
        raise BadResponse(f"page holds {len(data)} records, more than its per_page {per_page}")
    pages = math.ceil(total / per_page)
    stated = _count(pag.get("pages"), "pages")
    if stated is not None and stated != pages and not (total == 0 and stated in (0, 1)):
        raise BadResponse(f"pagination.pages {stated} contradicts total {total} / per_page {per_page}")
    page = _count(pag.get("page"), "page") or asked_page
    has_next = pag.get("has_next", page < pages)
    summary = doc.get("summary") if isinstance(doc.get("summary"), dict) else None
    part = to_part(data) if records else Part(len(data))
    return Page(part, page, per_page, total, pages, has_next is True, summary)


def to_part(records: list[Any]) -> Part:
    """CDR dicts → a :class:`Part`: one struct conversion in C++, or the slow path."""
    if not records:
        return Part(0)
    try:
        raw = pa.array(records, RAW)  # refuses a number, string or list where an object belongs
    except _ARROW_ERRORS:  # e.g. a number where a string belongs: every column value by value
        if not all(type(r) is dict for r in records):
            raise DecodeError("a record in 'data' is not an object") from None
        return Part(len(records), done=_per_value_batch(records))
    if raw.null_count:  # a null record becomes a null struct
        raise DecodeError("a record in 'data' is null")
    return Part(len(records), raw, _unknown_fields(records))


def finish(parts: Sequence[Part]) -> pa.RecordBatch:
    """Fast-path parts → one record batch of :data:`harvester.schema.SCHEMA` (one cast)."""
    raws = [p.raw for p in parts if p.raw is not None]
    if not raws:
        return _EMPTY
    raw = pa.concat_arrays(raws) if len(raws) > 1 else raws[0]
    extras: dict[int, dict[str, Any]] = {}
    offset = 0
    for p in parts:
        if p.unknown is not None:
            extras.update((offset + i, dict(u)) for i, u in enumerate(p.unknown) if u)
        offset += p.rows
    try:
        arrays = raw.cast(_TARGET).flatten()
    except _ARROW_ERRORS:  # e.g. an unparseable timestamp: that column value by value
        arrays = [
            _cast_or_coerce(name, kind, arr, extras)
            for (name, kind), arr in zip(FIELDS, raw.flatten(), strict=True)
        ]
    arrays.append(_extra_column(len(raw), extras))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def records_to_batch(records: list[Any]) -> pa.RecordBatch:
    """CDR dicts → one record batch of :data:`harvester.schema.SCHEMA`."""
    part = to_part(records)
    return part.done if part.done is not None else finish([part])


def _cast_or_coerce(name: str, kind: str, arr: pa.Array, extras: dict[int, dict[str, Any]]) -> pa.Array:
    """One raw column cast, or coerced value by value (the raw values are the API's own:
    timestamp text as sent, and numbers as float64, exact below 2**53)."""
    try:
        return arr.cast(ARROW_TYPES[kind])
    except _ARROW_ERRORS:
        return _column(name, kind, arr.to_pylist(), extras)


def _unknown_fields(records: list[dict[str, Any]]) -> list[dict[str, Any] | None] | None:
    """Per record, the fields the schema does not know; None when no record has one."""
    extra_keys = set().union(*records) - KNOWN
    if not extra_keys:
        return None
    return [{k: r[k] for k in extra_keys if k in r} or None for r in records]


def _extra_column(n: int, extras: dict[int, dict[str, Any]]) -> pa.Array:
    if not extras:
        return pa.nulls(n, pa.string())
    return pa.array([_dumps(extras[i]) if i in extras else None for i in range(n)], pa.string())


def _per_value_batch(records: list[dict[str, Any]]) -> pa.RecordBatch:
    """Slow path: every column value by value, coercing what it can and keeping the rest
    (and any field the schema does not know) in ``_extra``."""
    unknown = _unknown_fields(records) or []
    extras = {i: dict(u) for i, u in enumerate(unknown) if u}
    arrays = [_column(name, kind, [r.get(name) for r in records], extras) for name, kind in FIELDS]
    arrays.append(_extra_column(len(records), extras))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


_EMPTY = pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in SCHEMA], schema=SCHEMA)


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
    """An int64, or :data:`_LOST` (a fraction, text that is no number, out of range)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else _LOST
    if isinstance(v, float):
        return _to_int(int(v)) if v.is_integer() else _LOST
    if isinstance(v, str):
        if len(v) > 100:  # no int64 is written that long
            return _LOST
        try:
            return _to_int(int(v.strip()))
        except ValueError:
            f = _to_float(v)
            return _to_int(f) if isinstance(f, float) else _LOST
    return _LOST


def _to_float(v: Any) -> Any:
    """A finite float64, or :data:`_LOST` (text that is no number, NaN, infinity)."""
    if v is None:
        return None
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            f = float(v)
        elif isinstance(v, str) and len(v) <= 100:
            f = float(v.strip())
        else:
            return _LOST
    except (ValueError, OverflowError):
        return _LOST
    return f if math.isfinite(f) else _LOST


def _to_str(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    return _dumps(v)


def _dumps(v: Any) -> str:
    """JSON text of a value the API sent. orjson refuses nesting past 254 levels; the
    standard library's encoder takes what the decoder took (orjson reads up to 1024)."""
    try:
        return orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        pass
    try:
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    except (RecursionError, TypeError, ValueError):
        raise BadResponse("a record holds a value nested too deeply to keep") from None


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
