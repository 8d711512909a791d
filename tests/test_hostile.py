"""Hostile servers, one table row per way a server can lie, stall or attack (issue #14).

Every row runs the real CLI against a loopback server in front of the simulator that answers
what the row says, and asserts the same five things: the exit code; no traceback and the
error, where there is one, on one line; nothing written outside ``--out``; no token in any
output; memory bounded (all the harvester's processes summed). Then the row's own check:
the lake exact, or the shard reported unverified or failed, never "verified" by mistake.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from aiohttp import web

from harvester.lake.store import check_key
from harvester.sim import SimConfig
from tests.conftest import PAST, all_records, assert_lake_equals, dataset, sim_env
from tests.hostile import Hostile, Watched, answer, files_under, is_page, run_watched

TOKEN = "sim-partner-token"
MEMORY_MB = 900  # the harvester and its decode workers, summed; an unbounded answer passes this in a second


@dataclass
class Row:
    id: str
    scenario: Callable[[Hostile, web.Request], Any]
    code: int
    check: Callable[[Hostile, Path, Watched, dict[str, Any]], None] = lambda *a: None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def customers(h: Hostile) -> list[str]:
    return [c.auth_id for c in h.sim.data.customer_list]


def victim(h: Hostile) -> str:
    return customers(h)[1]


def others_exact(h: Hostile, out: Path, skip: str) -> None:
    """Every customer but ``skip`` is in the lake exactly; ``skip``'s rows only as far as kept."""
    expected = [r for r in all_records(h.sim) if r["account_id"] != skip]
    rows = duckdb.sql(
        f"SELECT uuid FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true) "
        f"WHERE account_id <> '{skip}'"
    ).fetchall()
    assert sorted(u for (u,) in rows) == sorted(r["uuid"] for r in expected)


def failed_or_unverified(rep: dict[str, Any], who: str, text: str) -> None:
    entries = rep["failed"] + rep["unverified"]
    assert any(who in e["shard"] and text in e["detail"] for e in entries), entries


# -- scenarios ---------------------------------------------------------------------------------
def listing_with(*bad: Any) -> Callable[[Hostile, web.Request], Any]:
    """The honest listing with ``bad`` auth_ids added as customers."""

    async def scenario(h: Hostile, request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith("/partner/accounts"):
            doc = await h.honest_doc(request)
            if doc["page"] == 1:
                ids = [b.replace("TMP", str(h.state["tmp"])) if isinstance(b, str) else b for b in bad]
                doc["accounts"] += [{"auth_id": b, "name": "x"} for b in ids]
            doc["total"] += len(bad)
            return answer(doc)
        return None

    return scenario


def traversal_check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    assert rep["exit_code"] == 1 and any(e["shard"].startswith("customer ") for e in rep["failed"])
    assert_lake_equals(out, all_records(h.sim))
    for path, _ in h.requests:
        assert "/cdrs" not in path or any(c in path for c in customers(h)), path


def on_page_of_victim(
    make: Callable[[Hostile, web.Request], Any],
) -> Callable[[Hostile, web.Request], Any]:
    async def scenario(h: Hostile, request: web.Request) -> web.StreamResponse | None:
        if is_page(request, victim(h)) and request.query.get("start_date") == str(h.sim.data.day_list[-1]):
            return await make(h, request)
        return None

    return scenario


async def redirect_away(h: Hostile, request: web.Request) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": h.state["collector"] + "/steal?x=1"})


async def endless_body(h: Hostile, request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"data": [')
    chunk = b'{"uuid": "x", "billsec": 1},' * 4000
    for _ in range(20_000):  # ~2 GB if nobody stops reading
        await resp.write(chunk)
    return resp


_ZEROS = gzip.compress(b" " * (64 << 20), compresslevel=9)


async def gzip_bomb(h: Hostile, request: web.Request) -> web.StreamResponse:
    body = b"".join([_ZEROS] * 16)  # 16 members of 64 MB of blanks: 1 GiB inflated
    return web.Response(status=200, body=body, headers={"Content-Encoding": "gzip"})


def pagination(**change: Any) -> Callable[[Hostile, web.Request], Any]:
    async def make(h: Hostile, request: web.Request) -> web.StreamResponse:
        doc = await h.honest_doc(request)
        doc["pagination"].update(change)
        return answer(doc)

    return make


async def total_grows_on_page_2(h: Hostile, request: web.Request) -> web.StreamResponse:
    doc = await h.honest_doc(request)
    if request.query.get("page") == "2":
        pag = doc["pagination"]
        total = pag["total"] + 50
        pag.update(total=total, pages=-(-total // pag["per_page"]), has_next=True)
    return answer(doc)


async def empty_pages_forever(h: Hostile, request: web.Request) -> web.StreamResponse:
    doc = await h.honest_doc(request)
    doc["pagination"].update(total=10**8, pages=10**6, has_next=True)
    if request.query.get("page") != "1":
        doc["data"] = []
    return answer(doc)


def record_change(summary_off: float = 0, **change: Any) -> Callable[[Hostile, web.Request], Any]:
    """Page 1's first record changed; the summary's total_cost off by ``summary_off``."""

    async def make(h: Hostile, request: web.Request) -> web.StreamResponse:
        doc = await h.honest_doc(request)
        if request.query.get("page") == "1" and doc["data"]:
            doc["data"][0].update(change)
        doc["summary"]["total_cost"] += summary_off
        return answer(doc)

    return make


async def null_uuid_shift(h: Hostile, request: web.Request) -> web.StreamResponse:
    """Page 1's first record has no uuid, and the last page repeats it in place of a real one."""
    doc = await h.honest_doc(request)
    if doc["data"]:
        doc["data"][0]["uuid"] = None
        if not doc["pagination"]["has_next"]:
            doc["data"][-1] = dict(doc["data"][0])
    return answer(doc)


def padded(body_of: Callable[[bytes], bytes]) -> Callable[[Hostile, web.Request], Any]:
    async def make(h: Hostile, request: web.Request) -> web.StreamResponse:
        status, body = await h.honest(request)
        return web.Response(status=status, body=body_of(body), content_type="application/json")

    return make


async def unprocessable(h: Hostile, request: web.Request) -> web.StreamResponse:
    text = f"bad filter\n2026-01-01 ERROR forged line \x1b[31mred\x1b[0m token {TOKEN}"
    return answer({"status": "error", "error": {"code": "VALIDATION_ERROR", "message": text}}, status=422)


def lagging_probes(h: Hostile, request: web.Request) -> Any:
    """The first one-record probes of single days answer 0, as a server still filling them."""

    async def go() -> web.StreamResponse | None:
        q = request.query
        if q.get("per_page") == "1" and q.get("start_date") == q.get("end_date"):
            n = h.state["lagged"] = h.state.get("lagged", 0) + 1
            if n <= 2:
                doc = await h.honest_doc(request)
                doc["pagination"].update(total=0, pages=0, has_next=False)
                doc["data"], doc["count"] = [], 0
                return answer(doc)
        return None

    return go()


def listing_repeats(h: Hostile, request: web.Request) -> Any:
    async def go() -> web.StreamResponse | None:
        if request.path.endswith("/partner/accounts"):
            doc = await h.honest_doc(request)
            doc.pop("total")
            doc["accounts"] = [{"auth_id": "MA_SAME", "name": "same"}]  # every page the same
            return answer(doc)
        return None

    return go()


def listing_endless(h: Hostile, request: web.Request) -> Any:
    async def go() -> web.StreamResponse | None:
        if request.path.endswith("/partner/accounts"):
            page = int(request.query["page"])
            accounts = [{"auth_id": f"MA_{page}_{i}"} for i in range(100)]
            return answer({"accounts": accounts, "page": page, "size": "abc"})
        return None

    return go()


async def retry_after_zero(h: Hostile, request: web.Request) -> web.StreamResponse:
    h.state["throttled"] = h.state.get("throttled", 0) + 1
    if h.state["throttled"] > 3:
        return answer(await h.honest_doc(request))
    return answer({"error": {"code": "RATE_LIMIT_EXCEEDED"}}, status=429, **{"Retry-After": "0"})


def honest(h: Hostile, request: web.Request) -> Any:
    async def go() -> None:
        return None

    return go()


# -- checks ------------------------------------------------------------------------------------
LAYOUT = re.compile(r"_lake\.json|_manifest/date=\d{4}-\d{2}-\d{2}\.json|date=\d{4}-\d{2}-\d{2}/cdr\.parquet")


def exact(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    """The lake equals the simulator, and every name in it is one the layout allows (each
    walked and checked by the same function every write goes through)."""
    assert_lake_equals(out, all_records(h.sim))
    names = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert names and all(LAYOUT.fullmatch(n) and check_key(n) == n for n in names), names


def victim_fails_with(text: str) -> Callable[[Hostile, Path, Watched, dict[str, Any]], None]:
    def check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
        failed_or_unverified(rep, victim(h), text)
        others_exact(h, out, victim(h))

    return check


def no_redirect_followed(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    assert h.state["stolen"] == [], "the redirect was followed"
    victim_fails_with("redirected to http://127.0.0.1")(h, out, w, rep)


def bounded_requests(limit: int) -> Callable[[Hostile, Path, Watched, dict[str, Any]], None]:
    def check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
        victim_fails_with("page ")(h, out, w, rep)
        pages = [q for p, q in h.requests if victim(h) in p and q.get("per_page") != "1"]
        assert len(pages) <= limit, len(pages)

    return check


def error_line(text: str) -> Callable[[Hostile, Path, Watched, dict[str, Any]], None]:
    def check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
        lines = [ln for ln in w.err.splitlines() if "error:" in ln]
        assert len(lines) == 1 and text in lines[0], w.err
        assert not out.exists(), "a failed run left a lake behind"

    return check


def sanitized(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    victim_fails_with("VALIDATION_ERROR: bad filter 2026-01-01 ERROR forged line")(h, out, w, rep)
    for text in (w.err, w.out):
        assert "\x1b" not in text and "\n2026-01-01 ERROR forged" not in text


def extra_kept(field_name: str) -> Callable[[Hostile, Path, Watched, dict[str, Any]], None]:
    def check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
        rows = duckdb.sql(
            f"SELECT _extra FROM read_parquet('{out}/**/*.parquet') WHERE _extra IS NOT NULL"
        ).fetchall()
        assert len(rows) == 1 and field_name in orjson.loads(rows[0][0])
        n = duckdb.sql(f"SELECT count(DISTINCT uuid) FROM read_parquet('{out}/**/*.parquet')").fetchall()
        assert n == [(len(all_records(h.sim)),)]

    return check


def probes_not_believed(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    assert h.state["lagged"] >= 2
    assert "exclusive" not in (out / "_lake.json").read_text()
    assert_lake_equals(out, all_records(h.sim))


def waited_between_429s(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
    assert rep["throttled"] == 3 and rep["exit_code"] == 0
    assert rep["elapsed_s"] >= 0.25 + 0.5 + 1.0  # the doubling floor, though Retry-After said 0
    assert_lake_equals(out, all_records(h.sim))


def listing_refused(text: str) -> Callable[[Hostile, Path, Watched, dict[str, Any]], None]:
    def check(h: Hostile, out: Path, w: Watched, rep: dict[str, Any]) -> None:
        assert text in rep["error"]
        listing = [p for p, _ in h.requests if p.endswith("/partner/accounts")]
        assert len(listing) <= 3 * 2_001

    return check


ROWS = [
    # 1. a customer id that would leave the lake, or name the wrong endpoint
    Row("id-traversal", listing_with("../../../../TMP/x/pwn", "x/../MA_OK", "..", "a\x00b", 12345), 1,
        traversal_check),
    # 2. a redirect to another origin must not take the credentials along
    Row("redirect", on_page_of_victim(redirect_away), 1, no_redirect_followed),
    # 3. answers without bounds
    Row("endless-body", on_page_of_victim(endless_body), 1, victim_fails_with("larger than --max-body-mb")),
    Row("gzip-bomb", on_page_of_victim(gzip_bomb), 1, victim_fails_with("larger than --max-body-mb"),
        ("--max-body-mb", "8")),
    Row("pages-1e9", on_page_of_victim(pagination(pages=10**9)), 1, victim_fails_with("contradicts")),
    Row("total-1e8-empty-pages", on_page_of_victim(empty_pages_forever), 1, bounded_requests(2 * 16 + 4)),
    Row("listing-repeats", listing_repeats, 4, listing_refused("repeats")),
    Row("listing-endless", listing_endless, 4, listing_refused("200000 accounts")),
    # 4. secrets and hostile text
    Row("error-text", on_page_of_victim(unprocessable), 1, sanitized),
    # 5-8. silent loss
    Row("total-grows", on_page_of_victim(total_grows_on_page_2), 1, victim_fails_with("page 2 says total"),
        ("--per-page", "60")),
    Row("null-uuid", on_page_of_victim(null_uuid_shift), 1, victim_fails_with("have no uuid")),
    Row("lagging-probe", lagging_probes, 0, probes_not_believed),
    Row("nan-cost", on_page_of_victim(record_change(12_345, total_cost="NaN")), 1,
        victim_fails_with("summary.total_cost"), ("--strict-sums",)),
    # 9. one bad value
    Row("huge-int", on_page_of_victim(record_change(billsec="99999999999999999999")), 0,
        extra_kept("billsec")),
    Row("deep-nesting", on_page_of_victim(record_change(deep=orjson.loads(b"[" * 300 + b"]" * 300))), 0,
        extra_kept("deep")),
    Row("per-page-2e33", on_page_of_victim(pagination(per_page=2**33)), 1, victim_fails_with("per_page")),
    Row("padded-json", on_page_of_victim(padded(lambda b: b" " * 100 + b + b"\n" * 100)), 0, exact),
    Row("one-customer-422", on_page_of_victim(unprocessable), 1, victim_fails_with("HTTP 422")),
    # 10. Retry-After that would hammer the server
    Row("retry-after-0", on_page_of_victim(retry_after_zero), 0, waited_between_429s),
    Row("honest", honest, 0, exact),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_hostile_server(row: Row, start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=130, end_date=PAST)))
    hostile = Hostile(sim, row.scenario)
    hostile.state.update(tmp=tmp_path, stolen=[])
    collector = web.Application()

    async def steal(request: web.Request) -> web.Response:
        hostile.state["stolen"].append(dict(request.headers))
        return answer({"data": []})

    collector.router.add_get("/steal", steal)
    crunner = web.AppRunner(collector)
    await crunner.setup()
    csite = web.TCPSite(crunner, "127.0.0.1", 0)
    await csite.start()
    hostile.state["collector"] = f"http://127.0.0.1:{csite._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    url = await hostile.start()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "pwn.json").write_text("{}")
    before = files_under(tmp_path)
    out = tmp_path / "lake"
    days = sim.data.day_list
    try:
        w = await run_watched(
            "harvest", "--base-url", url, "--start-date", str(days[0]), "--end-date", str(days[-1]),
            "--out", str(out), "--rate", "unlimited", "--retries", "1", "--verify-attempts", "2",
            "--json", "--fetch", "per-customer", *row.args,
            env=sim_env(sim) | row.env, limit_mb=MEMORY_MB,
        )  # fmt: skip
    finally:
        await hostile.stop()
        await crunner.cleanup()
    assert w.peak_mb < MEMORY_MB, f"memory reached {w.peak_mb:.0f} MB"
    assert w.code == row.code, w.err[-2000:]
    assert "Traceback" not in w.err and TOKEN not in w.err + w.out
    outside = {p for p in files_under(tmp_path) - before if out not in p.parents and p != out}
    assert outside == set(), f"written outside --out: {sorted(outside)}"
    assert (tmp_path / "x" / "pwn.json").read_text() == "{}"
    rep = orjson.loads(w.out)
    row.check(hostile, out, w, rep)


def test_every_name_the_lake_writes_stays_inside(tmp_path: Path) -> None:
    """The one function every lake key passes refuses whatever could leave the lake, on a
    local directory and on an object store alike."""
    from harvester.errors import StorageError
    from harvester.lake.local import LocalStore
    from harvester.lake.objects import ObjectStore
    from harvester.lake.store import check_key

    for good in (
        "_lake.json",
        "_lock",
        "date=2026-03-01/cdr-MA_1.parquet",
        "_manifest/date=2026-03-01/MA.1-x.json",
    ):
        assert check_key(good) == good
    bad = ["../x", "date=2026-03-01/../../x", "/etc/passwd", "a//b", "a/./b", "", "a\x00b", "a\\b", ".."]
    for key in bad:
        with pytest.raises(StorageError):
            check_key(key)
        with pytest.raises(StorageError):
            LocalStore(tmp_path).path(key)
        with pytest.raises(StorageError):
            ObjectStore("s3://lake/cdr", endpoint_url="http://127.0.0.1:9")._full(key)
