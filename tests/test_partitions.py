"""Past one machine (#17): N workers, each running one part of the plan, into one lake."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import orjson
import pytest

from harvester.records.shard import Shard, part_of
from harvester.sim import SimConfig
from tests.conftest import (
    DAY0,
    PAST,
    all_records,
    assert_lake_equals,
    cli,
    dataset,
    run_harvest,
    sim_args,
    sim_env,
    spawn,
)


def test_parts_are_disjoint_cover_the_plan_and_spread_a_customer() -> None:
    shards = [
        Shard(dt.date(2026, 3, 1) + dt.timedelta(days=d), "partner", f"MA_{c}")
        for d in range(30)
        for c in range(40)
    ]
    parts = [[s for s in shards if part_of(s.key, 3) == i] for i in range(3)]
    assert sorted(s for p in parts for s in p) == sorted(shards)  # disjoint, and together the plan
    assert all(300 <= len(p) <= 500 for p in parts), [len(p) for p in parts]
    assert {part_of(s.key, 3) for s in shards if s.account == "MA_0"} == {0, 1, 2}  # a customer's days spread


async def test_three_workers_at_once_make_one_exact_lake(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=4, days=3, calls_per_day=300, end_date=PAST)))
    out = tmp_path / "lake"
    procs = [
        await spawn(*sim_args(sim, out, "--partition", f"{i}/3", "--json", "--quiet"), env=sim_env(sim))
        for i in range(3)
    ]
    results = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 120) for p in procs))
    reports = [orjson.loads(stdout) for stdout, _ in results]
    assert [p.returncode for p in procs] == [0, 0, 0], [e.decode()[-500:] for _, e in results]
    assert sum(r["shards"]["planned"] for r in reports) == 12  # the parts together are the plan
    assert all(r["shards"]["planned"] > 0 for r in reports)
    assert_lake_equals(out, all_records(sim))
    assert not list(out.glob("_locks/*")) and not (out / "_lock").exists()
    # The same part again skips what it committed: nothing is fetched twice.
    code, stdout, _ = await cli(*sim_args(sim, out, "--partition", "1/3", "--json"), env=sim_env(sim))
    again = orjson.loads(stdout)
    assert (
        code == 0
        and again["shards"]["skipped"] == again["shards"]["planned"] == reports[1]["shards"]["planned"]
    )


async def test_an_indexed_job_takes_its_part_from_the_environment(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=50, end_date=PAST)))
    out = tmp_path / "lake"
    planned = []
    for i in range(2):
        code, stdout, err = await cli(
            *sim_args(sim, out, "--partitions", "2", "--json"), env=sim_env(sim, JOB_COMPLETION_INDEX=str(i))
        )
        assert code == 0, err
        planned.append(orjson.loads(stdout)["shards"]["planned"])
    assert sum(planned) == 4
    assert_lake_equals(out, all_records(sim))


@pytest.mark.parametrize("value", ["3/3", "0/0", "a/b", "1", "-1/3"])
async def test_a_bad_partition_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    env = {"VOBIZ_AUTH_ID": "PA_X", "VOBIZ_AUTH_TOKEN": "t"}
    args = ["harvest", "--base-url", "http://127.0.0.1:9", "--out", str(tmp_path / "l"), "--partition", value]
    code, _, err = await cli(*args, env=env)
    assert code == 2 and err.count("\n") == 1 and "--partition" in err and "Traceback" not in err
    code, _, err = await cli(*args[:-2], "--partitions", "3", env=env)  # no JOB_COMPLETION_INDEX
    assert code == 2 and "JOB_COMPLETION_INDEX" in err


async def test_auto_rate_converges_fast_and_keeps_the_limit_it_learned(start_sim, tmp_path: Path) -> None:
    """A 120-request job with --rate auto from an empty lake against 20 requests/s: it finds
    the limit (its ceiling within 15% of it, ≤ 2% answered 429), keeps it in the lake, and the
    next run starts just under it (no 429 at all). How much of the limit it uses over a job
    depends on this machine's load: ``benchmarks --scenario limit`` measures that."""
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=2800), rate_limit=20, burst=4)
    )  # fixed days (the run is told its today): the same 120-odd requests on any date
    out = tmp_path / "lake"
    today = DAY0 + dt.timedelta(days=6)
    first = await run_harvest(sim, out, rate="auto", today=today)
    assert first["exit_code"] == 0 and first["throttled"] >= 1
    answered = first["requests"] - first["throttled"]
    assert 115 <= first["requests"] <= 145 and first["throttled"] <= 0.02 * first["requests"], first
    learned = orjson.loads((out / "_lake.json").read_bytes())["server"]["rate_limit"]
    assert 0.85 * 20 <= learned <= 21, (learned, answered, first["elapsed_s"])
    second = await run_harvest(sim, out, rate="auto", refresh=True, today=today)
    assert second["exit_code"] == 0 and second["throttled"] == 0, second["throttled"]
    assert_lake_equals(out, all_records(sim))


async def test_a_worker_killed_and_restarted_with_its_index_resumes_its_part(
    start_sim, tmp_path: Path
) -> None:
    """Worker 1 of 3 is killed (kill -9, after its 2nd commit) while the others run; started
    again with the same index it fetches only what it had not committed, and the lake is exact."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=4, days=3, calls_per_day=300, end_date=PAST)))
    out = tmp_path / "lake"
    procs = [
        await spawn(
            *sim_args(sim, out, "--partition", f"{i}/3", "--concurrency", "2"),
            env=sim_env(sim, **({"VOBIZ_HARVEST_CRASH": "after-commit:2"} if i == 1 else {})),
        )
        for i in range(3)
    ]
    await asyncio.gather(*(asyncio.wait_for(p.communicate(), 120) for p in procs))
    assert [p.returncode for p in procs] == [0, -9, 0]
    committed = {p.relative_to(out / "_manifest").as_posix() for p in out.glob("_manifest/date=*/*.json")}
    before = dict(sim.shard_requests)
    code, _, err = await cli(*sim_args(sim, out, "--partition", "1/3", "--json"), env=sim_env(sim))
    assert code == 0, err
    for key in committed:
        day, who = key.removeprefix("date=").removesuffix(".json").split("/")
        assert sim.shard_requests[(who, day)] == before.get((who, day), 0), key  # not fetched again
    assert_lake_equals(out, all_records(sim))
