"""Completeness you can prove: drift, kill -9 and resume, the lock, nightly re-runs."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
from pathlib import Path

import orjson
import pytest

from harvester.harvest.run import harvest_async as harvest
from harvester.lake.lake import Lake
from harvester.records.shard import Shard
from harvester.sim import Dataset, SimConfig, Simulator
from tests.conftest import (
    PAST,
    all_records,
    assert_lake_equals,
    cli,
    committed_keys,
    config_for,
    dataset,
    lake_rows,
    no_temp_files,
    run_harvest,
    sim_args,
    sim_env,
    spawn,
)


# -- drift: the current day keeps receiving calls ---------------------------------------------
def _today_in_arrival_order(sim: Simulator, auth_id: str, today: dt.date) -> list[dict]:
    """Base records of the day (all there from the start), then late arrivals in order."""
    base = sim.data._generate(sim.data.by_id[auth_id], today, sim.data.count(auth_id, today))
    return base + sim.data.extra.get((auth_id, today.isoformat()), [])


@pytest.mark.parametrize("drift", [40.0, 400.0])
async def test_drift_never_silently_short(start_sim, tmp_path: Path, drift: float) -> None:
    today = dt.datetime.now(dt.UTC).date()
    ds = Dataset(seed=11, customers=2, days=3, calls_per_day=700, end_date=today)
    sim = await start_sim(SimConfig(dataset=ds, drift_per_second=drift, latency_ms=2))
    out = tmp_path / "lake"
    cfg = config_for(sim, out, today=today, concurrency=8)
    rep = await harvest(cfg)
    closed = [d for d in ds.day_list if d < today]
    ids = [c.auth_id for c in ds.customer_list]
    rows = lake_rows(out)
    uuids = [r["uuid"] for r in rows]
    assert len(uuids) == len(set(uuids)), "a duplicate slipped through"
    # Closed days: always exactly the simulator's records.
    closed_rows = [r for r in rows if r["date"] < today]
    assert {r["uuid"] for r in closed_rows} == {r["uuid"] for r in ds.records(ids, closed)}
    # The open day: verified with exactly the records that existed at its last probe, or loudly unverified.
    lake = Lake(out)
    for auth_id in ids:
        rec = lake.committed(Shard(today, "partner", auth_id))
        assert rec is not None and rec["open_day"] is True
        got = {r["uuid"] for r in rows if r["date"] == today and r["account_id"] == auth_id}
        if rec["verified"]:
            arrived = _today_in_arrival_order(sim, auth_id, today)
            assert got == {r["uuid"] for r in arrived[: rec["api_total"]]}
        else:
            assert rep["exit_code"] == 1
            assert any(u["shard"] == f"{today}/{auth_id}" for u in rep["unverified"])
    if rep["shards"]["unverified"] == 0:
        assert rep["exit_code"] == 0
    assert sim.stats["drift_records"] > 0
    # Once the drift stops, the same command verifies everything, exactly, and exits 0.
    sim.freeze()
    again = await harvest(cfg)
    assert again["exit_code"] == 0, again
    assert again["shards"]["skipped"] == len(closed) * len(ids)
    assert_lake_equals(out, ds.records(ids, ds.day_list))


async def test_open_day_is_rechecked_until_closed(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=2, calls_per_day=150)))
    out = tmp_path / "lake"
    last = sim.data.day_list[-1]
    first = await run_harvest(sim, out, today=last)  # the last day is "today": open
    assert first["exit_code"] == 0
    # Next run, same day: the open shard is re-checked (1 request) though not asked for.
    second = await run_harvest(
        sim, out, today=last, start_date=sim.data.day_list[0], end_date=sim.data.day_list[0]
    )
    assert second["shards"]["rechecked"] == 1 and second["shards"]["skipped"] == 1
    # A day later it is closed: the re-check finds it unchanged and marks it final.
    third = await run_harvest(sim, out, today=last + dt.timedelta(days=1))
    assert third["shards"]["rechecked"] == 1
    fourth = await run_harvest(sim, out, today=last + dt.timedelta(days=1))
    assert fourth["shards"]["skipped"] == 2 and fourth["requests"] == 1  # only the listing
    assert_lake_equals(out, all_records(sim))


async def test_a_deleted_day_is_harvested_again(start_sim, tmp_path: Path) -> None:
    """A shard whose manifest says committed but whose file is gone is harvested again,
    never counted complete."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=120)))
    out = tmp_path / "lake"
    assert (await run_harvest(sim, out))["exit_code"] == 0
    gone = sim.data.day_list[0]
    shutil.rmtree(out / f"date={gone}")
    rep = await run_harvest(sim, out)
    assert rep["exit_code"] == 0
    assert rep["shards"]["reharvested"] == 2 and rep["shards"]["skipped"] == 2
    assert_lake_equals(out, all_records(sim))


# -- unverified shards ------------------------------------------------------------------------
async def test_shortfall_is_refetched_then_reported(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=300)))
    original = sim._page
    lie = {"n": 0}

    def short_page(request, auth_ids, envelope, pair):  # drop one record from page 2, always
        body = original(request, auth_ids, envelope, pair)
        if request.query.get("page") == "2":
            doc = orjson.loads(body)
            doc["data"] = doc["data"][1:]
            lie["n"] += 1
            return orjson.dumps(doc)
        return body

    sim._page = short_page
    rep = await run_harvest(sim, tmp_path / "lake", verify_attempts=2)
    assert rep["exit_code"] == 1 and rep["shards"]["unverified"] == 1
    assert 2 <= lie["n"] <= 4, "the shard was fetched again (a bounded number of times)"
    assert "distinct records but the API total is" in rep["unverified"][0]["detail"]
    allowed = await run_harvest(sim, tmp_path / "lake", verify_attempts=1, allow_unverified=True)
    assert allowed["exit_code"] == 0 and allowed["shards"]["unverified"] == 1


async def test_sums_are_checked_strictly_on_request(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=120)))
    original = sim._page

    def bad_summary(request, auth_ids, envelope, pair):
        doc = orjson.loads(original(request, auth_ids, envelope, pair))
        doc["summary"]["total_billable_seconds"] += 7
        return orjson.dumps(doc)

    sim._page = bad_summary
    lax = await run_harvest(sim, tmp_path / "a")
    assert lax["exit_code"] == 0 and lax["shards"]["verified"] == 1
    strict = await run_harvest(sim, tmp_path / "b", strict_sums=True, verify_attempts=1)
    assert strict["exit_code"] == 1
    assert "sum(billsec)" in strict["unverified"][0]["detail"]


# -- kill -9 and resume ----------------------------------------------------------------------
async def _resume_and_check(sim: Simulator, out: Path, committed: set[str]) -> None:
    before = dict(sim.shard_requests)
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
    assert code == 0, err
    assert_lake_equals(out, all_records(sim))
    assert no_temp_files(out) == []
    for key in committed:  # no committed shard was fetched again
        day, who = key.split("/")
        assert sim.shard_requests[(who, day)] == before.get((who, day), 0), key


@pytest.mark.parametrize(
    "point", ["before-rename:2", "after-rename:3", "after-commit:2", "after-day-file:1", "after-day-doc:1"]
)
async def test_kill9_at_a_crash_point_then_resume(start_sim, tmp_path: Path, point: str) -> None:
    # 12 shards, 6 open at a time (concurrency 2 + 4): a kill at the 2nd or 3rd passage leaves
    # some uncommitted however the commits of the open shards interleave.
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=4, calls_per_day=250, end_date=PAST)))
    out = tmp_path / "lake"
    code, _, _ = await cli(
        *sim_args(sim, out, "--concurrency", "2"), env=sim_env(sim, VOBIZ_HARVEST_CRASH=point)
    )
    assert code == -signal.SIGKILL
    committed = committed_keys(out)
    assert len(committed) < 12, "the run was killed before it finished"
    if point.startswith("after-commit"):
        assert len(committed) >= 2
    if point.startswith("before-rename"):
        assert any(p.name.endswith(".tmp") for p in out.rglob(".*")), "a temp file was left"
    await _resume_and_check(sim, out, committed)


async def test_kill9_mid_shard_then_resume(start_sim, tmp_path: Path) -> None:
    ds = dataset(customers=3, days=2, calls_per_day=900, end_date=PAST)
    sim = await start_sim(SimConfig(dataset=ds, hold_after=30))
    out = tmp_path / "lake"
    proc = await spawn(*sim_args(sim, out, "--concurrency", "4"), env=sim_env(sim))
    for _ in range(400):
        if sim.stats["held"] >= 2:
            break
        await asyncio.sleep(0.025)
    assert sim.stats["held"] >= 2, "the simulator never held an answer"
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    committed = committed_keys(out)
    sim.config.hold_after = None
    sim.released.set()
    assert (out / "_lock").exists(), "the dead run's lock is left behind"
    await _resume_and_check(sim, out, committed)
    assert not (out / "_lock").exists()


# -- durability: what reaches the disk, in which order --------------------------------------
def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every file or directory fsynced from now on (through /proc)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files through /proc")
async def test_every_file_and_record_is_durable_when_written(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every data file and every manifest record is fsynced before its rename, and its
    directory after: a record is durable the moment it commits its shard."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=150)))
    out = tmp_path / "lake"
    synced = _fsyncs(monkeypatch)
    rep = await run_harvest(sim, out, decode_workers=0)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 4
    data = sorted(str(p) for p in out.rglob("cdr.parquet"))
    docs = sorted(str(p) for p in (out / "_manifest").glob("date=*.json"))
    assert len(data) == len(docs) == 2 and not (out / "_staging").exists()
    staged = [s for s in synced if "/_staging/" in s and s.endswith(".tmp")]
    assert len([s for s in staged if ".staged." in s]) == 4  # each shard's file before its rename
    assert len([s for s in staged if ".json." in s]) == 4  # each shard's record: its commit
    assert len([s for s in synced if "/.cdr.parquet." in s]) == 2  # each day's file
    assert len([s for s in synced if "/_manifest/.date=" in s]) == 2  # each day's record
    assert {str(Path(p).parent) for p in data + docs} <= set(synced)  # and their directories
    assert {str(out / f"_staging/date={d}") for d in sim.data.day_list} <= set(synced)
    synced.clear()
    again = await run_harvest(sim, out, refresh=True, decode_workers=0)  # every record is replaced
    assert again["shards"]["reharvested"] == 4
    assert len([s for s in synced if "/_staging/" in s and ".json." in s]) == 4
    assert_lake_equals(out, all_records(sim))


# -- the lock --------------------------------------------------------------------------------
async def test_second_run_on_a_locked_lake_is_refused(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=50, end_date=PAST)))
    out = tmp_path / "lake"
    out.mkdir()
    holder = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        host = os.uname().nodename
        (out / "_lock").write_bytes(orjson.dumps({"pid": holder.pid, "host": host, "since": "x"}))
        code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
        assert code == 4 and f"locked by pid {holder.pid}" in err and "Traceback" not in err
    finally:
        holder.kill()
        await holder.wait()
    # The holder is dead now: its lock is stale and is taken over.
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
    assert code == 0, err


# -- nightly re-runs -------------------------------------------------------------------------
async def test_nightly_lookback_rechecks_and_heals_late_records(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=4, calls_per_day=160)))
    out = tmp_path / "lake"
    days = sim.data.day_list
    first = await run_harvest(sim, out)
    assert first["exit_code"] == 0 and first["shards"]["verified"] == 8
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_lock"}
    # Nightly: yesterday (days[-1]) plus a 3-day lookback; nothing changed upstream.
    nightly = {"start_date": days[-1], "end_date": days[-1], "lookback": 3, "customers": ()}
    before = sim.stats["requests"]
    rep = await run_harvest(sim, out, **nightly)
    assert rep["exit_code"] == 0
    assert rep["shards"]["rechecked"] == 6 and rep["shards"]["skipped"] == 2
    assert sim.stats["requests"] - before == 1 + 6  # the account listing + one probe per shard
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "_lock"}
    assert after == stamp, "an unchanged re-check wrote something"
    # A late CDR lands on an old day: exactly that shard is re-harvested.
    late_cust = sim.data.customer_list[1].auth_id
    late = sim.data.add_late_record(late_cust, days[1])
    rep = await run_harvest(sim, out, **nightly)
    assert rep["exit_code"] == 0
    assert rep["shards"]["reharvested"] == 1 and rep["shards"]["rechecked"] == 5
    assert rep["shards"]["unchanged"] == 5
    rows = assert_lake_equals(out, all_records(sim))
    assert late["uuid"] in {r["uuid"] for r in rows}


async def test_no_dates_means_yesterday(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=3, calls_per_day=40, end_date=PAST)))
    out = tmp_path / "lake"
    code, stdout, err = await cli(
        "harvest", "--base-url", sim.base_url, "--out", str(out), "--json", env=sim_env(sim)
    )
    rep = orjson.loads(stdout)
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    assert rep["start_date"] == rep["end_date"] == yesterday.isoformat(), err
    assert code == 0 and rep["records"] == 0  # the simulator has no calls that day


async def test_probe_dates_reports_the_bucket(start_sim) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=300, end_date=PAST)))
    day = sim.data.day_list[0]
    code, out, err = await cli(
        "probe-dates", "--base-url", sim.base_url, "--date", day.isoformat(), "--json", env=sim_env(sim)
    )
    assert code == 0, err
    rep = orjson.loads(out)
    first = min(c.auth_id for c in sim.data.customer_list)  # the listing is sorted by auth_id
    recs = sim.data.records([first], [day])
    assert rep["account"] == first
    assert rep["total"] == len(recs)
    assert rep["earliest_start_time"].startswith(min(r["start_time"] for r in recs)[:19])
    assert rep["latest_start_time"].startswith(max(r["start_time"] for r in recs)[:19])
    assert rep["buckets_as_utc_day"] is True and rep["end_date"] == "inclusive"


@pytest.mark.parametrize("exclusive", [False, True])
async def test_day_window_is_learnt_once_per_lake(start_sim, tmp_path: Path, exclusive: bool) -> None:
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=2, days=3, calls_per_day=120), end_exclusive=exclusive)
    )
    out = tmp_path / "lake"
    rep = await run_harvest(sim, out)
    assert rep["exit_code"] == 0 and rep["records"] == len(all_records(sim)) > 0
    assert_lake_equals(out, all_records(sim))
    lake_doc = orjson.loads((out / "_lake.json").read_bytes())
    assert lake_doc["server"]["end_date"] == ("exclusive" if exclusive else "inclusive")
    before = sim.stats["requests"]
    again = await run_harvest(sim, out)  # known now: no probes, every shard skipped
    assert again["shards"]["skipped"] == 6 and sim.stats["requests"] - before == 1  # the listing
