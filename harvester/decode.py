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
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from harvester.schema import ARROW_TYPES, FIELD_NAMES, FIELDS, KNOWN, SCHEMA, TIMESTAMP

_GET_ALL = itemgetter(*FIELD_NAMES)
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


class DecodeError(ValueError):
    """The body is not a CDR page (not JSON, truncated, wrong shape): worth a retry."""


@dataclass(frozen=True)
class Page:
    """One decoded list page."""

    batch: pa.RecordBatch
    page: int
    per_page: int
    total: int
    pages: int
    has_next: bool
    summary: dict[str, Any] | None

    @property
    def rows(self) -> int:
        return self.batch.num_rows


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
    return Page(records_to_batch(data), page, per_page, total, pages, has_next, summary)


def records_to_batch(records: list[Any]) -> pa.RecordBatch:
    """CDR dicts → one record batch of :data:`harvester.schema.SCHEMA`."""
    if not all(isinstance(r, dict) for r in records):
        raise DecodeError("a record in 'data' is not an object")
    n = len(records)
    if n == 0:
        return _EMPTY
    extras: dict[int, dict[str, Any]] = {}
    try:
        columns: list[tuple[Any, ...]] = list(zip(*map(_GET_ALL, records), strict=True))
    except KeyError:  # a record lacks a documented field: slower, lenient path
        columns = [tuple(r.get(name) for r in records) for name in FIELD_NAMES]
    arrays = [
        _column(name, kind, list(col), extras) for (name, kind), col in zip(FIELDS, columns, strict=True)
    ]
    unknown = set().union(*records) - KNOWN
    for key in unknown:
        for i, r in enumerate(records):
            if key in r:
                extras.setdefault(i, {})[key] = r[key]
    if extras:
        extra_col = [
            orjson.dumps(extras[i], option=orjson.OPT_SORT_KEYS).decode() if i in extras else None
            for i in range(n)
        ]
        arrays.append(pa.array(extra_col, pa.string()))
    else:
        arrays.append(pa.nulls(n, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


_EMPTY = pa.RecordBatch.from_arrays([pa.array([], f.type) for f in SCHEMA], schema=SCHEMA)


def _column(name: str, kind: str, values: list[Any], extras: dict[int, dict[str, Any]]) -> pa.Array:
    """Build one column fast; fall back to per-value coercion if the values do not fit."""
    typ = ARROW_TYPES[kind]
    try:
        if typ == TIMESTAMP:
            return pc.cast(pa.array(values, pa.string()), TIMESTAMP)
        if kind != "int" or all(type(v) is int or v is None for v in values):
            return pa.array(values, typ)  # Arrow would silently truncate 1.5 to 1: checked above

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
