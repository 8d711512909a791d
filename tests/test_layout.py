"""The lake a reader opens: one file a day whatever the customers, the partner feed where it
is the cheapest exact read, and rewrites (a late CDR) a reader never sees half of."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.sim import SimConfig
from tests.conftest import (
    PAST,
    Poller,
    all_records,
    assert_lake_equals,
    cli,
    committed_keys,
    dataset,
    day_blocks,
    run_harvest,
    sim_args,
    sim_env,
)


def _partner(customers: int = 300, days: int = 3, calls: int = 4, **kw: Any) -> SimConfig:
    """Many small customers: lognormal volumes around ``calls`` a day (most make a handful)."""
    more = {"end_date": kw.pop("end_date")} if "end_date" in kw else {}
    ds = dataset(customers=customers, days=days, calls_per_day=calls, volumes="lognormal", **more)
    return SimConfig(dataset=ds, **kw)


def _files_per_day(out: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for p in out.rglob("*.parquet"):
        found[p.parent.name] = found.get(p.parent.name, 0) + 1
    return found


@pytest.mark.parametrize("fetch", ["auto", "per-customer"])
async def test_a_partner_of_many_small_customers_lands_in_one_file_a_day(
    start_sim, tmp_path: Path, fetch: str
) -> None:
    sim = await start_sim(_partner())
    out = tmp_path / "lake"
    rep = await run_harvest(sim, out, fetch=fetch)
    assert rep["exit_code"] == 0, rep
    assert_lake_equals(out, all_records(sim))
    assert _files_per_day(out) == {f"date={d}": 1 for d in sim.data.day_list}
    records = len(all_records(sim))
    feed = {k: n for k, n in sim.shard_requests.items() if k[0] == "global"}
    if fetch == "auto":  # the feed: a day's pages, plus one page read to check attribution
        assert rep["fetch"] == "global" and rep["shards"]["planned"] == 3
        pages = sum(-(-len(sim.data.records([c.auth_id for c in sim.data.customer_list], [d])) // 100)
                    for d in sim.data.day_list)  # fmt: skip
        assert set(feed) == set(sim.shard_requests)  # not one request per customer
        fewest = pages + 3  # each day's feed pages, and the listing's 3 pages
        # Besides: one page read to check attribution, and the day-window probes (≤ 6).
        assert fewest < rep["requests"] <= fewest + 1 + 6 and rep["requests"] <= 1.25 * fewest
    else:
        assert rep["fetch"] == "per-customer" and rep["shards"]["planned"] == 900 and not feed
    # Each day's file: the customers in order, a block each (or the feed's, by account).
    for d in sim.data.day_list:
        accounts = [
            a
            for _, t in day_blocks(out / f"date={d}/cdr.parquet")
            for a in t.column("account_id").to_pylist()
        ]
        assert accounts == sorted(accounts)
    doc = orjson.loads((out / f"_manifest/date={sim.data.day_list[0]}.json").read_bytes())
    assert doc["complete"] is True and doc["failed"] == {} and doc["rows"] > 0
    assert records == sum(orjson.loads(p.read_bytes())["rows"] for p in out.glob("_manifest/date=*.json"))


async def test_a_feed_that_names_no_customer_falls_back_to_customers(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(_partner(customers=20, feed_names_customers=False))
    out = tmp_path / "lake"
    rep = await run_harvest(sim, out, fetch="auto")
    assert rep["exit_code"] == 0 and rep["fetch"] == "per-customer", rep
    assert "PA_SIMULATOR" in rep["fetch_note"]
    assert_lake_equals(out, all_records(sim))
    feed = sum(n for k, n in sim.shard_requests.items() if k[0] == "global")
    assert 1 <= feed <= 3  # the probe of the newest days, nothing more


async def test_forcing_an_unattributable_feed_commits_nothing_and_the_rerun_reads_customers(
    start_sim, tmp_path: Path
) -> None:
    sim = await start_sim(_partner(customers=20, days=2, feed_names_customers=False))
    out = tmp_path / "lake"
    rep = await run_harvest(sim, out, fetch="global")
    assert rep["exit_code"] == 1 and rep["shards"]["failed"] == 2
    assert "cannot be attributed" in rep["failed"][0]["detail"]
    assert committed_keys(out) == set() and not list(out.rglob("*.parquet"))
    again = await run_harvest(sim, out, fetch="auto")  # auto: the lake remembers the feed names strangers
    assert again["exit_code"] == 0 and again["fetch"] == "per-customer"
    assert_lake_equals(out, all_records(sim))


@pytest.mark.parametrize("fetch", ["auto", "per-customer"])
async def test_a_late_cdr_rewrites_its_day_and_a_reader_never_sees_half_of_it(
    start_sim, tmp_path: Path, fetch: str
) -> None:
    sim = await start_sim(_partner(customers=40, days=3, calls=30))
    out = tmp_path / "lake"
    first = await run_harvest(sim, out, fetch=fetch)
    assert first["exit_code"] == 0
    before = len(all_records(sim))
    late_day = sim.data.day_list[0]
    who = sim.data.customer_list[7].auth_id
    sim.data.add_late_record(who, late_day)
    last = sim.data.day_list[-1]
    with Poller(out) as poller:
        for _ in range(3):  # the nightly run, re-checking the last days
            rep = await run_harvest(sim, out, fetch=fetch, start_date=last, end_date=last, lookback=2)
            await asyncio.sleep(0.05)
    assert rep["exit_code"] == 0, rep
    assert_lake_equals(out, all_records(sim))
    assert len(all_records(sim)) == before + 1
    assert poller.seen, "the reader never read the lake"
    # Never a duplicate, never fewer rows than the lake held before the rewrite.
    assert all(n == distinct and n in (before, before + 1) for n, distinct in poller.seen), set(poller.seen)
    assert _files_per_day(out) == {f"date={d}": 1 for d in sim.data.day_list}


@pytest.mark.parametrize("point", ["after-commit:2", "after-day-file:1"])
async def test_a_feed_harvest_killed_mid_run_resumes_without_fetching_committed_days(
    start_sim, tmp_path: Path, point: str
) -> None:
    sim = await start_sim(_partner(customers=150, days=5, calls=6, end_date=PAST))
    out = tmp_path / "lake"
    args = sim_args(sim, out, "--fetch", "auto", "--concurrency", "2")
    code, _, _ = await cli(*args, env=sim_env(sim, VOBIZ_HARVEST_CRASH=point))
    assert code == -signal.SIGKILL
    committed = committed_keys(out)
    assert 1 <= len(committed) < 5 and all(k.endswith("/global") for k in committed), committed
    before = dict(sim.shard_requests)
    code, _, err = await cli(*args, env=sim_env(sim))
    assert code == 0, err
    assert_lake_equals(out, all_records(sim))
    assert _files_per_day(out) == {f"date={d}": 1 for d in sim.data.day_list}
    for key in committed:  # a committed day is not fetched again
        day = key.split("/")[0]
        assert sim.shard_requests[("global", day)] == before[("global", day)], key
