"""End to end: the simulator over loopback HTTP → the harvester → Parquet read by DuckDB."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from harvester.config import auto_workers
from harvester.harvest import fetch
from harvester.harvest.pool import DecodePool
from harvester.lake.store import StagedTable, StorageError
from harvester.records.decode import Collector
from harvester.records.schema import SCHEMA
from harvester.sim import SimConfig
from tests.conftest import (
    PAST,
    a_dead_pid,
    all_records,
    assert_lake_equals,
    cli,
    dataset,
    day_blocks,
    no_temp_files,
    run_harvest,
    shard_record,
    sim_args,
    sim_env,
)


def _sized_dataset():
    """Shards of 0, 1, 100, 101, 2,600 and more records across 3 customers × 2 days."""
    ds = dataset(customers=3, days=2, calls_per_day=50)
    a, b, c = (x.auth_id for x in ds.customer_list)
    d0, d1 = (day.isoformat() for day in ds.day_list)
    ds.counts.update({(a, d0): 0, (a, d1): 1, (b, d0): 100, (b, d1): 101, (c, d0): 2600, (c, d1): 7})
    return ds


async def test_partner_harvest_is_exact(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=_sized_dataset()))
    rep = await run_harvest(sim, tmp_path / "lake")
    assert rep["exit_code"] == 0, rep
    assert rep["shards"]["planned"] == 6 and rep["shards"]["verified"] == 6
    ids = [c.auth_id for c in sim.data.customer_list]
    expected = sim.data.records(ids, sim.data.day_list)
    assert len(expected) == 0 + 1 + 100 + 101 + 2600 + 7
    assert_lake_equals(tmp_path / "lake", expected)
    assert rep["records"] == len(expected)
    # One file per day, whatever the customers; every file on the one schema.
    files = sorted(p.relative_to(tmp_path / "lake") for p in (tmp_path / "lake").rglob("*.parquet"))
    assert [str(f) for f in files] == [f"date={d}/cdr.parquet" for d in sim.data.day_list]
    for f in (tmp_path / "lake").rglob("*.parquet"):
        assert pq.read_schema(f).remove_metadata().equals(SCHEMA)
        # blocks by account, each newest first, as the API pages a day (pages arrive in any order)
        blocks = day_blocks(f)
        assert [who for who, _ in blocks] == sorted(who for who, _ in blocks)
        for who, block in blocks:
            assert set(block.column("account_id").to_pylist()) == {who}
            starts = block.column("start_time").to_pylist()
            assert starts == sorted(starts, reverse=True)
        starts = pq.read_table(f, columns=["start_time"]).column(0).to_pylist()
        # zstd where it pays; delta-encoded times and integers, dictionary-encoded text
        chunks = pq.ParquetFile(f).metadata.row_group(0)
        cols = {chunks.column(i).path_in_schema: chunks.column(i) for i in range(len(SCHEMA))}
        assert cols["uuid"].compression == cols["cost"].compression == "ZSTD"
        for name in ("account_id", "hangup_cause", "_extra", "start_time", "billsec"):
            assert cols[name].compression == "UNCOMPRESSED"
        assert "DELTA_BINARY_PACKED" in cols["start_time"].encodings
        assert "DELTA_BINARY_PACKED" in cols["id"].encodings
        # min/max statistics where they prune (times, numbers, account), none on free text
        assert cols["start_time"].statistics.min == min(starts)
        assert cols["start_time"].statistics.max == max(starts)
        assert cols["account_id"].statistics.has_min_max and cols["cost"].statistics.has_min_max
        assert cols["uuid"].statistics is None and cols["caller_id_number"].statistics is None
    assert no_temp_files(tmp_path / "lake") == []
    # The 2,600-record shard took 26 pages of 100.
    big = sim.shard_requests[(ids[2], sim.data.day_list[0].isoformat())]
    assert big == 26


@pytest.mark.parametrize("workers", [0, 1])  # 1: the other shards are kept by a decode worker
async def test_a_large_shard_is_streamed_to_its_file_row_group_by_row_group(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(Collector, "CHUNK", 300)  # windows of 3 pages of 100
    writes: list[int] = []
    real_write = StagedTable.write

    def counted(self: StagedTable, table: Any) -> None:
        if self.where.endswith(".staged"):  # the shard's own file, not its day's
            writes.append(table.num_rows)
        real_write(self, table)

    monkeypatch.setattr(StagedTable, "write", counted)
    sim = await start_sim(SimConfig(dataset=_sized_dataset()))
    lake = tmp_path / "lake"
    # only the 2,600-record shard streams
    rep = await run_harvest(sim, lake, stream_rows=500, decode_workers=workers)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 6, rep
    ids = [c.auth_id for c in sim.data.customer_list]
    assert_lake_equals(lake, sim.data.records(ids, sim.data.day_list))
    day = sim.data.day_list[0].isoformat()
    assert writes == [300] * 8 + [200]  # windows of 3 pages, each a row group
    blocks = dict(day_blocks(lake / f"date={day}/cdr.parquet"))
    assert blocks[ids[2]].num_rows == 2600
    starts = blocks[ids[2]].column("start_time").to_pylist()
    assert starts == sorted(starts, reverse=True)
    record = shard_record(lake, day, ids[2])
    assert record is not None and (record["rows"], record["pages"], record["verified"]) == (2600, 26, True)
    assert sim.shard_requests[(ids[2], day)] == 26
    assert no_temp_files(lake) == []


async def test_at_most_two_shards_stream_at_once(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collector, "CHUNK", 200)
    open_now, most = 0, 0
    real_stream = fetch.Fetcher._stream

    async def counted(self: fetch.Fetcher, *args: Any) -> Any:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            return await real_stream(self, *args)
        finally:
            open_now -= 1

    monkeypatch.setattr(fetch.Fetcher, "_stream", counted)
    sim = await start_sim(SimConfig(dataset=dataset(customers=5, days=1, calls_per_day=700)))
    lake = tmp_path / "lake"
    rep = await run_harvest(sim, lake, stream_rows=300)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 5, rep
    assert most == 2 and open_now == 0
    assert_lake_equals(lake, all_records(sim))


async def test_a_streamed_shard_that_does_not_verify_is_streamed_again(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collector, "CHUNK", 300)
    real_verify = fetch.verify_counts
    calls = 0

    def short_once(rows: int, *args: object) -> object:  # the streamed shard's first count is short
        nonlocal calls
        calls += rows > 500
        return real_verify(rows - (rows > 500 and calls == 1), *args)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch, "verify_counts", short_once)
    sim = await start_sim(SimConfig(dataset=_sized_dataset()))
    lake = tmp_path / "lake"
    rep = await run_harvest(sim, lake, stream_rows=500)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 6, rep
    ids = [c.auth_id for c in sim.data.customer_list]
    day = sim.data.day_list[0].isoformat()
    assert calls == 2
    assert sim.shard_requests[(ids[2], day)] == 2 * 26  # streamed twice, not walked (a walk re-probes)
    record = shard_record(lake, day, ids[2])
    assert record is not None and (record["rows"], record["attempts"]) == (2600, 2)
    assert_lake_equals(lake, sim.data.records(ids, sim.data.day_list))
    assert no_temp_files(lake) == []


async def test_a_stream_that_fails_leaves_nothing_and_the_rerun_completes(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Collector, "CHUNK", 300)
    real_write = StagedTable.write
    calls = 0

    def failing_third_write(self: StagedTable, table: object) -> None:
        nonlocal calls
        if self.where.endswith(".staged"):  # the streamed shard's file, not a day's
            calls += 1
            if calls == 3:
                raise StorageError("write refused by the disk")
        real_write(self, table)  # type: ignore[arg-type]

    monkeypatch.setattr(StagedTable, "write", failing_third_write)
    sim = await start_sim(SimConfig(dataset=_sized_dataset()))
    lake = tmp_path / "lake"
    rep = await run_harvest(sim, lake, stream_rows=500)
    assert rep["exit_code"] == 1 and rep["shards"]["failed"] == 1 and rep["shards"]["verified"] == 5
    ids = [c.auth_id for c in sim.data.customer_list]
    day = sim.data.day_list[0].isoformat()
    assert shard_record(lake, day, ids[2]) is None and ids[2] not in dict(
        day_blocks(lake / f"date={day}/cdr.parquet")
    )
    assert not list(lake.glob("_staging/*/*"))
    assert orjson.loads((lake / f"_manifest/date={day}.json").read_bytes())["complete"] is False
    assert no_temp_files(lake) == []
    monkeypatch.setattr(StagedTable, "write", real_write)
    again = await run_harvest(sim, lake, stream_rows=500)
    assert again["exit_code"] == 0 and again["shards"]["harvested"] == 1 and again["shards"]["skipped"] == 5
    assert_lake_equals(lake, sim.data.records(ids, sim.data.day_list))


async def test_second_run_adds_no_duplicates(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=150)))
    out = tmp_path / "lake"
    first = await run_harvest(sim, out)
    second = await run_harvest(sim, out, refresh=True)
    assert first["exit_code"] == second["exit_code"] == 0
    assert second["shards"]["reharvested"] == 4
    ids = [c.auth_id for c in sim.data.customer_list]
    assert_lake_equals(out, sim.data.records(ids, sim.data.day_list))


@pytest.mark.parametrize("workers", [0, 1])  # 1: the decode worker orders the file
async def test_global_scope_sorted_by_account(start_sim, tmp_path: Path, workers: int) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=120)))
    rep = await run_harvest(sim, tmp_path / "lake", scope="global", decode_workers=workers)
    assert rep["exit_code"] == 0 and rep["shards"]["planned"] == 2
    assert_lake_equals(tmp_path / "lake", all_records(sim))
    files = list((tmp_path / "lake").rglob("*.parquet"))
    assert sorted(f.name for f in files) == ["cdr.parquet"] * 2
    for f in files:
        rows = pq.read_table(f, columns=["account_id", "start_time"]).to_pylist()
        keys = [(r["account_id"], -r["start_time"].timestamp()) for r in rows]
        assert keys == sorted(keys) and len({r["account_id"] for r in rows}) == 3


async def test_account_scope_with_customer_credentials(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=130)))
    cust = sim.data.customer_list[1]
    rep = await run_harvest(
        sim, tmp_path / "lake", scope="account", auth_id=cust.auth_id, auth_token=cust.auth_token
    )
    assert rep["exit_code"] == 0, rep
    assert_lake_equals(tmp_path / "lake", sim.data.records([cust.auth_id], sim.data.day_list))


async def test_given_customers_only(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=4, days=1, calls_per_day=90)))
    pick = (sim.data.customer_list[0].auth_id, sim.data.customer_list[3].auth_id)
    rep = await run_harvest(sim, tmp_path / "lake", customers=pick)
    assert rep["exit_code"] == 0 and rep["accounts"] == 2
    assert_lake_equals(tmp_path / "lake", sim.data.records(list(pick), sim.data.day_list))
    assert sim.stats["requests"] == rep["requests"]  # no account listing was needed


async def test_filters_reach_the_api(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=300)))
    filters = {"call_direction": "inbound", "min_duration": "30", "status": "answered"}
    rep = await run_harvest(sim, tmp_path / "lake", filters=filters)
    assert rep["exit_code"] == 0, rep
    ids = [c.auth_id for c in sim.data.customer_list]
    want = [
        r
        for r in sim.data.records(ids, sim.data.day_list)
        if r["call_direction"] == "inbound" and r["duration"] >= 30 and r["billsec"] > 0
    ]
    assert 0 < len(want) < len(sim.data.records(ids, sim.data.day_list)) / 4
    assert_lake_equals(tmp_path / "lake", want)
    # The lake remembers its filters: another filter set into the same lake is refused.
    other = await run_harvest(sim, tmp_path / "lake", filters={"call_direction": "outbound"})
    assert other["exit_code"] == 2 and "filters" in other["error"]


async def test_server_granting_fewer_per_page(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=500), max_per_page=30))
    rep = await run_harvest(sim, tmp_path / "lake")
    assert rep["exit_code"] == 0
    recs = sim.data.records([sim.data.customer_list[0].auth_id], sim.data.day_list)
    assert_lake_equals(tmp_path / "lake", recs)
    assert rep["pages"] == -(-len(recs) // 30)


async def test_429_and_500_are_retried_and_result_exact(start_sim, tmp_path: Path) -> None:
    # A 4 req/s limit the harvester does not know about, plus a 500/502/503/504 at the start.
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=250), rate_limit=4, burst=2)
    )
    sim.faults.pick = _scripted(["500", "503", "429-header"])  # type: ignore[method-assign]
    rep = await run_harvest(sim, tmp_path / "lake", rate=None)
    assert rep["exit_code"] == 0, rep
    assert rep["throttled"] >= 1 and rep["retries"] >= 3
    assert sim.stats["fault:500"] == 1 and sim.stats["fault:503"] == 1
    assert_lake_equals(tmp_path / "lake", all_records(sim))


def _scripted(kinds: list[str]):
    queue = list(kinds)

    def pick() -> str | None:
        return queue.pop(0) if queue else None

    return pick


async def test_wrong_token_exits_3_with_clear_message(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, end_date=PAST)))
    code, out, err = await cli(
        *sim_args(sim, tmp_path / "lake", "--json", "--auth-id", sim.config.auth_id),
        env={"VOBIZ_AUTH_TOKEN": "wrong-token-value"},
    )
    assert code == 3, err
    assert "401" in err and "INVALID_CREDENTIALS" in err
    assert "Traceback" not in err
    assert orjson.loads(out)["exit_code"] == 3
    assert "wrong-token-value" not in out + err


async def test_cli_harvest_json_and_layout(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=3, calls_per_day=80, end_date=PAST)))
    out = tmp_path / "lake"
    code, stdout, err = await cli(*sim_args(sim, out, "--json"), env=sim_env(sim))
    assert code == 0, err
    rep = orjson.loads(stdout)
    assert rep["shards"]["verified"] == 6 and rep["status"] == "complete"
    days = [f"date={d}" for d in sim.data.day_list]
    assert sorted(p.name for p in out.iterdir()) == ["_lake.json", "_manifest", *days]
    assert "COMPLETE" in err and "read_parquet" in err
    ids = [c.auth_id for c in sim.data.customer_list]
    assert_lake_equals(out, sim.data.records(ids, sim.data.day_list))
    assert dt.date.fromisoformat(rep["start_date"]) == sim.data.day_list[0]
    assert dt.date.fromisoformat(rep["end_date"]) == sim.data.day_list[-1]


async def test_decode_workers_give_the_same_lake(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=2600)))
    rep = await run_harvest(sim, tmp_path / "lake", decode_workers=1)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 4
    assert_lake_equals(tmp_path / "lake", all_records(sim))


@pytest.mark.parametrize(("learned", "busy"), [(None, False), (50.0, False), (1000.0, True)])
async def test_decode_workers_start_only_once_requests_come_fast(
    start_sim, tmp_path: Path, learned: float | None, busy: bool
) -> None:
    """With ``--decode-workers auto``, a run paced below 100 requests a second decodes every
    page on the loop and starts no worker; under ``--rate auto`` the workers start once the
    rate gets there (here at once: the lake keeps a limit of 1,000/s an earlier run found).
    The lake is exact either way."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=150)))
    out = tmp_path / "lake"
    rate: float | str = 50.0
    if learned is not None:
        out.mkdir()
        lake = {"format": 2, "scope": "partner", "filters": {}, "server": {"rate_limit": learned}}
        (out / "_lake.json").write_bytes(orjson.dumps(lake))
        rate = "auto"
    rep = await run_harvest(sim, out, rate=rate)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 4
    workers = auto_workers() if busy else 0
    assert rep["decode_workers"]["processes"] == workers
    assert (rep["decode_workers"]["pages"] > 0) == (workers > 0)
    assert_lake_equals(out, all_records(sim))


async def test_with_workers_every_page_is_decoded_beside_the_loop(start_sim, tmp_path: Path) -> None:
    """The same code path with and without workers: with them, every page is decoded in a
    worker process (none on the loop), and the lake is the same."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=700)))
    rep = await run_harvest(sim, tmp_path / "lake", decode_workers=2)
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 6
    assert rep["decode_workers"] == {"processes": 2, "pages": rep["pages"]}
    none = await run_harvest(sim, tmp_path / "none", decode_workers=0)
    assert none["decode_workers"] == {"processes": 0, "pages": 0} and none["pages"] == rep["pages"]
    assert_lake_equals(tmp_path / "lake", all_records(sim))
    assert_lake_equals(tmp_path / "none", all_records(sim))


async def test_page_bodies_wait_in_scratch_files_that_go_with_the_run(
    start_sim, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A closed day's page bodies are spilled to a scratch file for the worker, not held: the
    file goes once the day is encoded, the run's scratch directory when it ends, and a
    scratch directory a killed run left is removed by the next."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=700)))
    # A short temp directory of its own: the pool's fork server listens on a Unix socket made
    # there, whose path may not pass 107 bytes (pytest's tmp_path can be longer than that).
    scratch = Path(tempfile.mkdtemp(prefix="vh-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    dead = a_dead_pid()
    (scratch / f"vobiz-harvest-{dead}-killed").mkdir()  # left by a run killed with -9
    (scratch / f"vobiz-harvest-{dead}-killed" / "x.bodies").write_bytes(b"{}")
    live = scratch / f"vobiz-harvest-{os.getpid()}-running"  # a run still going
    live.mkdir()
    out = tmp_path / "lake"
    code, stdout, err = await cli(
        *sim_args(sim, out, "--decode-workers", "1"), "--json", env=sim_env(sim, TMPDIR=str(scratch))
    )
    assert code == 0, err
    assert orjson.loads(stdout)["decode_workers"]["pages"] == orjson.loads(stdout)["pages"]
    assert_lake_equals(out, all_records(sim))
    assert list(scratch.iterdir()) == [live]  # its own gone, and a dead run's; a live run's kept


async def test_each_closed_day_is_spilled_and_its_file_removed_once_encoded(
    start_sim, tmp_path: Path
) -> None:
    from harvester.harvest.run import harvest_async
    from tests.conftest import config_for

    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=700)))
    pool = DecodePool(1)
    spills: list[Any] = []
    make = pool.spill
    pool.spill = lambda: spills.append(make()) or spills[-1]  # type: ignore[method-assign]
    try:
        rep = await harvest_async(config_for(sim, tmp_path / "lake", decode_workers=1), pool=pool)
        assert rep["exit_code"] == 0 and rep["shards"]["verified"] == rep["shards"]["planned"]
        assert len(spills) == rep["shards"]["planned"]  # every shard's bodies went through a file
        assert not any(Path(s.path).exists() for s in spills)
    finally:
        pool.close()
    assert not Path(spills[0].path).parent.exists()
    assert_lake_equals(tmp_path / "lake", all_records(sim))


async def test_scratch_space_that_cannot_be_used_costs_nothing(start_sim, tmp_path: Path) -> None:
    """Bodies that cannot be written to scratch files (the scratch directory gone, as on a
    full or cleaned disk): the pages are decoded on the loop instead, and the lake is exact."""
    from harvester.harvest.run import harvest_async
    from tests.conftest import config_for

    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=700)))
    pool = DecodePool(1)
    shutil.rmtree(pool._scratch)  # type: ignore[arg-type]
    try:
        rep = await harvest_async(config_for(sim, tmp_path / "lake", decode_workers=1), pool=pool)
    finally:
        pool.close()
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 4
    assert rep["decode_workers"]["pages"] == 0  # every page decoded on the loop
    assert_lake_equals(tmp_path / "lake", all_records(sim))


def _answer_once(sim: Any, page: str, body: bytes) -> dict[str, int]:
    """Have the simulator answer ``body`` (status 200) the next time ``page`` is asked for;
    returns the count of such answers left (set it to 1 to have one more)."""
    original = sim._page
    left = {"left": 1}

    def patched(request, auth_ids, envelope, pair):
        answer = original(request, auth_ids, envelope, pair)
        if request.query.get("page") == page and left["left"]:
            left["left"] -= 1
            return body
        return answer

    sim._page = patched
    return left


async def test_a_page_the_worker_cannot_decode_is_fetched_again(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=900)))
    broken = _answer_once(sim, "5", b'{"data": [oops]}')  # looks like JSON, but is not
    rep = await run_harvest(sim, tmp_path / "lake", decode_workers=1)
    assert rep["exit_code"] == 0 and broken["left"] == 0
    assert_lake_equals(tmp_path / "lake", all_records(sim))


async def test_an_html_page_answered_200_is_fetched_again_alone(start_sim, tmp_path: Path) -> None:
    """A proxy's HTML error page with status 200 is retried as that one page: the shard stays
    with its worker (no fetch of the whole shard again)."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, calls_per_day=900)))
    html = _answer_once(sim, "3", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    shard = (sim.data.customer_list[0].auth_id, sim.data.day_list[0].isoformat())
    html["left"] = 0
    await run_harvest(sim, tmp_path / "clean", decode_workers=1)
    clean = sim.shard_requests[shard]  # its pages, and the day-window probe's
    html["left"] = 1
    rep = await run_harvest(sim, tmp_path / "lake", decode_workers=1)
    assert rep["exit_code"] == 0 and html["left"] == 0
    assert rep["retries"] == 1
    assert rep["decode_workers"]["pages"] == rep["pages"]  # every page decoded by the worker
    assert sim.shard_requests[shard] - clean == clean + 1  # the same requests, and page 3 again
    assert_lake_equals(tmp_path / "lake", all_records(sim))


async def test_a_decode_worker_that_dies_costs_nothing(start_sim, tmp_path: Path) -> None:
    """Workers killed while pages are in flight (only the pool this test started): their
    pages are fetched again and decoded on the loop, and the lake is exact."""
    from harvester.harvest.run import harvest_async
    from tests.conftest import config_for

    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=900)))
    pool = DecodePool(2)
    workers = list(pool._executor._processes)  # type: ignore[attr-defined]
    original = sim._page
    killed: list[int] = []

    def page(request, auth_ids, envelope, pair):  # the workers die while pages are in flight
        if request.query.get("page") == "4" and not killed:
            killed.extend(workers)
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        return original(request, auth_ids, envelope, pair)

    sim._page = page
    try:
        rep = await harvest_async(config_for(sim, tmp_path / "lake", decode_workers=2), pool=pool)
    finally:
        pool.close()
    assert len(killed) == 2, killed
    assert rep["exit_code"] == 0 and rep["shards"]["verified"] == 4
    assert 0 < rep["decode_workers"]["pages"] < rep["pages"]  # the rest were decoded on the loop
    assert_lake_equals(tmp_path / "lake", all_records(sim))


async def test_the_default_cli_harvest_decodes_in_workers(start_sim, tmp_path: Path) -> None:
    """By default (``--decode-workers auto``: 2 on two cores) every page is decoded by a worker."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=450)))
    out = tmp_path / "lake"
    code, stdout, err = await cli(*sim_args(sim, out), "--json", env=sim_env(sim))
    assert code == 0, err
    rep = orjson.loads(stdout)
    assert rep["decode_workers"]["processes"] == auto_workers()
    assert rep["decode_workers"]["pages"] == (rep["pages"] if auto_workers() else 0)
    assert_lake_equals(out, all_records(sim))
