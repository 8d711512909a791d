"""Decoding what the API really sends: type drift, unknown fields, missing fields, bad bodies."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from harvester.decode import DecodeError, decode_page, records_to_batch
from harvester.schema import SCHEMA
from harvester.sim.data import Dataset


def _records(n: int) -> list[dict]:
    ds = Dataset(customers=1, days=1, calls_per_day=n, end_date=dt.date(2026, 3, 1))
    return [dict(r) for r in ds.shard(ds.customer_list[0].auth_id, dt.date(2026, 3, 1))]


def test_type_drift_is_coerced_and_nothing_is_lost() -> None:
    recs = _records(40)[:5]
    recs[0]["jitter"] = "abc"  # not a number: kept raw in _extra
    recs[1]["new_field"] = {"a": 1}  # unknown field
    recs[2]["id"] = 1.5  # lossy for int64: kept raw, never truncated
    recs[3]["failure_code"] = 16  # a number where the docs say string
    recs[4]["duration"] = "42"  # a numeric string
    del recs[4]["codec"]  # a missing documented field
    recs[4]["other"] = 1  # ... plus an unknown one (same key count as a complete record)
    batch = records_to_batch(recs)
    assert batch.schema.equals(SCHEMA)
    extra = [orjson.loads(x) if x else None for x in batch.column("_extra").to_pylist()]
    assert extra[0] == {"jitter": "abc"} and batch.column("jitter")[0].as_py() is None
    assert extra[1] == {"new_field": {"a": 1}}
    assert extra[2] == {"id": 1.5} and batch.column("id")[2].as_py() is None
    assert batch.column("failure_code")[3].as_py() == "16"
    assert batch.column("duration")[4].as_py() == 42
    assert batch.column("codec")[4].as_py() is None and extra[4] == {"other": 1}
    assert extra[3] is None


def test_timestamps_with_offsets_and_naive_are_utc() -> None:
    recs = _records(40)[:3]
    recs[0]["start_time"] = "2026-03-01T15:30:00+05:30"
    recs[1]["start_time"] = "2026-03-01 10:00:00"
    batch = records_to_batch(recs)
    got = batch.column("start_time").to_pylist()
    assert got[0] == dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    assert got[1] == dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502</html>",
        b'{"success": true, "data": [{"uuid": "x"',
        b'{"data": {}}',
        b'{"data": [1, 2]}',
        b'{"data": [], "pagination": {}}',
        b'{"success": false, "data": []}',
    ],
)
def test_bodies_that_are_not_pages_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_page(body, 1, 100)


def test_page_numbers_come_from_the_server() -> None:
    body = orjson.dumps({"data": _records(40)[:30], "pagination": {"page": 1, "per_page": 30, "total": 95}})
    page = decode_page(body, 1, 100)
    assert (page.per_page, page.total, page.pages, page.rows) == (30, 95, 4, 30)
