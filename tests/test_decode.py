"""Decoding what the API really sends: type drift, unknown fields, missing fields, bad bodies."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from harvester.errors import DecodeError
from harvester.records.decode import Collector, decode_page, records_to_batch
from harvester.records.schema import SCHEMA
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
        b'{"data": [null], "pagination": {"total": 1}}',
        b'{"data": [[1, 2]], "pagination": {"total": 1}}',
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


def _page(recs: list[dict], total: int) -> bytes:
    return orjson.dumps({"data": recs, "pagination": {"page": 1, "per_page": 100, "total": total}})


def test_fast_and_slow_pages_mix_and_every_value_is_exact() -> None:
    recs = _records(400)[:300]
    pages = [recs[i : i + 100] for i in range(0, 300, 100)]
    pages[0][5]["id"] = 2**60 + 1  # exact as int64, not as float64: the per-value path keeps it
    pages[0][6]["hangup_cause_code"] = True  # a bool where an integer belongs
    pages[1][7]["answer_time"] = "not a time"  # one unparseable timestamp, kept raw in _extra
    pages[1][8]["duration"] = 2.5  # a fraction where an integer belongs, kept raw
    pages[2][9]["caller_id_name"] = 12345  # a number where a string belongs: the whole page is slow
    got = Collector()
    for p in pages:
        got.add(decode_page(_page(p, 300), 1, 100))
    table = got.table()
    assert table.schema.equals(SCHEMA) and table.num_rows == 300
    rows = {r["uuid"]: r for r in table.to_pylist()}
    extra = {u: orjson.loads(r["_extra"]) for u, r in rows.items() if r["_extra"]}
    assert rows[pages[0][5]["uuid"]]["id"] == 2**60 + 1
    assert rows[pages[0][6]["uuid"]]["hangup_cause_code"] == 1
    assert rows[pages[1][7]["uuid"]]["answer_time"] is None
    assert extra[pages[1][7]["uuid"]] == {"answer_time": "not a time"}
    assert rows[pages[1][8]["uuid"]]["duration"] is None
    assert extra[pages[1][8]["uuid"]] == {"duration": 2.5}
    assert rows[pages[2][9]["uuid"]]["caller_id_name"] == "12345"
    assert len(extra) == 2
    # every other value equals what the API sent
    for rec in recs:
        row = rows[rec["uuid"]]
        for key in ("billsec", "ring_time", "total_cost", "jitter", "uuid", "account_id", "hangup_cause"):
            assert row[key] == rec[key], key
        want = dt.datetime.fromisoformat(rec["start_time"].replace("Z", "+00:00"))
        assert row["start_time"] == want


def test_collector_joins_pages_in_page_order_in_chunks_and_tracks_uuids() -> None:
    recs = _records(600)[:500]
    bodies = {
        n: orjson.dumps(
            {"data": recs[(n - 1) * 100 : n * 100], "pagination": {"page": n, "per_page": 100, "total": 500}}
        )
        for n in range(1, 6)
    }
    got = Collector(track_uuids=True)
    got.CHUNK = 150  # several chunks, the last one partial
    fresh = [got.add(decode_page(bodies[n], n, 100)) for n in (3, 1, 5, 2, 4)]  # as they arrive
    fresh.append(got.add(decode_page(bodies[1], 1, 100)))  # page 1 seen again
    assert fresh == [100, 100, 100, 100, 100, 0]
    table = got.table()
    uuids = table.column("uuid").to_pylist()
    want = [r["uuid"] for r in recs]
    assert uuids == want[:100] + want[:100] + want[100:]  # page order, the repeat beside its page
    assert table.column("uuid").num_chunks == 3  # 200 + 200 + 200 rows
