"""Faults, bad input and secrets: the run rides out the network, refuses bad input in one
line, and never writes a credential anywhere."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from harvester.sim import SimConfig
from harvester.sim.faults import KINDS
from harvester.sim.queries import ApiError
from tests.conftest import (
    PAST,
    all_records,
    assert_lake_equals,
    cli,
    committed_keys,
    dataset,
    no_temp_files,
    run_harvest,
    sim_args,
    sim_env,
    spawn,
)


async def test_every_fault_kind_survived_exactly(start_sim, tmp_path: Path) -> None:
    ds = dataset(customers=2, days=2, calls_per_day=2500)
    sim = await start_sim(SimConfig(dataset=ds, fault_rate=0.2, fault_seed=5, slow_seconds=1.5))
    rep = await run_harvest(sim, tmp_path / "lake", timeout=0.8, concurrency=8, retries=10)
    assert rep["exit_code"] == 0, rep
    fired = {k: sim.stats[f"fault:{k}"] for k in KINDS}
    assert all(n >= 1 for n in fired.values()), fired
    assert rep["retries"] >= sum(fired.values())
    assert_lake_equals(tmp_path / "lake", all_records(sim))
    assert no_temp_files(tmp_path / "lake") == []


async def test_auto_rate_finds_the_limit_and_stays_exact(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=2000), rate_limit=40, burst=4)
    )
    rep = await run_harvest(sim, tmp_path / "lake", rate="auto", concurrency=8)
    assert rep["exit_code"] == 0, rep
    assert rep["rate"].startswith("auto (settled at")
    assert rep["throttled"] == sim.stats["429"]
    assert_lake_equals(tmp_path / "lake", all_records(sim))


async def test_a_failing_shard_fails_alone(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=1, calls_per_day=150)))
    broken = sim.data.customer_list[1].auth_id
    original = sim._page

    def page(request, auth_ids, envelope, pair):
        if auth_ids == [broken]:
            raise ApiError(503, "UNAVAILABLE", "this customer's shard is down")
        return original(request, auth_ids, envelope, pair)

    sim._page = page
    rep = await run_harvest(sim, tmp_path / "lake", retries=2)
    assert rep["exit_code"] == 1
    assert rep["shards"]["failed"] == 1 and rep["shards"]["verified"] == 2
    assert broken in rep["failed"][0]["shard"] and "HTTP 503" in rep["failed"][0]["detail"]
    others = [c.auth_id for c in sim.data.customer_list if c.auth_id != broken]
    assert_lake_equals(tmp_path / "lake", sim.data.records(others, sim.data.day_list))
    sim._page = original  # the customer is back: a re-run completes the lake
    again = await run_harvest(sim, tmp_path / "lake")
    assert again["exit_code"] == 0 and again["shards"]["skipped"] == 2
    assert_lake_equals(tmp_path / "lake", all_records(sim))


@pytest.mark.parametrize("how", ["sigterm", "deadline"])
async def test_stop_cleanly_then_resume(start_sim, tmp_path: Path, how: str) -> None:
    ds = dataset(customers=4, days=2, calls_per_day=800, end_date=PAST)
    # A deadline must find the run unfinished whatever the day: past a few requests the
    # simulator holds every answer until released (a SIGTERM comes after the first commit).
    held = {"hold_after": 12} if how == "deadline" else {}
    sim = await start_sim(SimConfig(dataset=ds, latency_ms=40, **held))
    out = tmp_path / "lake"
    extra = ["--concurrency", "2", "--json"] + (["--max-runtime", "1.5"] if how == "deadline" else [])
    proc = await spawn(*sim_args(sim, out, *extra), env=sim_env(sim))
    if how == "sigterm":
        for _ in range(400):
            if committed_keys(out):
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, stderr
    rep = orjson.loads(stdout)
    assert rep["stopped"] in ("SIGTERM", "--max-runtime reached")
    assert "Traceback" not in stderr.decode()
    assert no_temp_files(out) == [] and not (out / "_lock").exists()
    sim.released.set()
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
    assert code == 0, err
    assert_lake_equals(out, all_records(sim))


async def test_forbidden_exits_3(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, end_date=PAST), can_view_cdrs=False))
    code, _, err = await cli(*sim_args(sim, tmp_path / "lake"), env=sim_env(sim))
    assert code == 3 and "403" in err and "can_view_cdrs" in err
    assert err.count("\n") <= 12 and "Traceback" not in err


async def test_unreachable_host_exits_4(tmp_path: Path) -> None:
    code, _, err = await cli(
        "harvest",
        "--base-url",
        "http://127.0.0.1:9",
        "--start-date",
        PAST.isoformat(),
        "--out",
        str(tmp_path / "lake"),
        "--retries",
        "3",
        env={"VOBIZ_AUTH_ID": "PA_X", "VOBIZ_AUTH_TOKEN": "t0ken-never-shown"},
    )
    assert code == 4, err
    assert "127.0.0.1:9" in err and "Traceback" not in err
    assert "t0ken-never-shown" not in err


async def test_disk_failure_names_the_path(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=2, calls_per_day=50, end_date=PAST)))
    out = tmp_path / "lake"
    out.mkdir()
    (out / "_lake.json").write_bytes(orjson.dumps({"format": 2, "scope": "partner", "filters": {}}))
    first, second = sim.data.day_list
    blocked = out / f"date={first}"
    blocked.write_text("not a directory")  # the day's file cannot be created
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
    assert code == 4 and str(blocked) in err and "Traceback" not in err
    # The blocked day's shard stays committed in the staging area, invisible to readers.
    assert not (out / f"_manifest/date={first}.json").exists()
    assert f"{first}/{sim.data.customer_list[0].auth_id}" in committed_keys(out)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.parquet")} <= {f"date={second}/cdr.parquet"}
    assert no_temp_files(out) == []
    blocked.unlink()  # the disk is fixed: the re-run folds the day without fetching it again
    before = sum(sim.shard_requests.values())
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))
    assert code == 0 and sum(sim.shard_requests.values()) == before, err
    assert_lake_equals(out, all_records(sim))


BAD_INPUT = [
    (["--start-date", "2026-13-01"], "--start-date"),
    (["--start-date", "2026-03-05", "--end-date", "2026-03-01"], "after --end-date"),
    (["--start-date", "2020-01-01", "--end-date", "2024-01-01"], "--yes"),
    (["--end-date", "2999-01-01", "--start-date", "2998-12-31"], "future"),
    (["--per-page", "0"], "--per-page"),
    (["--per-page", "101"], "--per-page"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "many"], "--concurrency"),
    (["--stream-rows", "5"], "--stream-rows"),
    (["--decode-workers", "99"], "--decode-workers"),
    (["--decode-workers", "lots"], "--decode-workers"),
    (["--rate", "fast"], "--rate"),
    (["--rate", "-3"], "--rate"),
    (["--scope", "planet"], "--scope"),
    (["--status", "nope"], "--status"),
    (["--call-direction", "sideways"], "--call-direction"),
    (["--min-duration", "-1"], "--min-duration"),
    (["--base-url", "ftp://api.vobiz.ai"], "--base-url"),
    (["--base-url", "not a url"], "--base-url"),
    (["--base-url", "http://api.example.com"], "--insecure"),
    (["--scope", "global", "--customer", "MA_X"], "--customer"),
    (["--out", "{file}"], "not a directory"),
    (["--out", "{file}/lake"], "is a file"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--auth-token-file", "/nonexistent/token"], "--auth-token-file"),
]


async def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    env = {"VOBIZ_AUTH_ID": "PA_X", "VOBIZ_AUTH_TOKEN": "secret-bad-input-token"}
    base = ["harvest", "--base-url", "http://127.0.0.1:9", "--start-date", PAST.isoformat()]

    async def one(args: list[str], needle: str) -> None:
        args = [a.replace("{file}", str(a_file)) for a in args]
        code, out, err = await cli(*base, *args, env=env)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (args, err)
        assert len(lines) == 1, (args, err)
        assert needle in lines[0], (args, err)
        assert "Traceback" not in err and "secret-bad-input-token" not in out + err

    await asyncio.gather(*(one(a, n) for a, n in BAD_INPUT))
    # no credentials at all
    code, _, err = await cli(*base, env={})
    assert code == 2 and "VOBIZ_AUTH_TOKEN" in err and len(err.strip().splitlines()) == 1


async def test_no_secret_is_ever_written(start_sim, tmp_path: Path) -> None:
    ds = dataset(customers=3, days=2, calls_per_day=400, end_date=PAST)
    sim = await start_sim(SimConfig(dataset=ds, fault_rate=0.2, fault_seed=9, slow_seconds=1.2))
    out = tmp_path / "lake"
    log = tmp_path / "run.log"
    secrets = [sim.config.auth_token] + [c.auth_token for c in ds.customer_list]
    token_file = tmp_path / "token"
    token_file.write_text(sim.config.auth_token + "\n")
    args = sim_args(sim, out, "--json", "--log-level", "debug", "--timeout", "1")
    args += ["--auth-id", sim.config.auth_id, "--auth-token-file", str(token_file)]
    code, stdout, stderr = await cli(*args)
    assert code == 0, stderr
    log.write_text(stdout + stderr)
    # a run refused with 401, and the listing commands, print nothing secret either
    code401, out401, err401 = await cli(
        *sim_args(sim, tmp_path / "other", "--log-level", "debug"),
        env=sim_env(sim, VOBIZ_AUTH_TOKEN="WRONG" + secrets[0]),
    )
    assert code401 == 3
    code_acc, out_acc, err_acc = await cli("accounts", "--base-url", sim.base_url, "--json", env=sim_env(sim))
    assert code_acc == 0 and len(orjson.loads(out_acc)) == 3
    written = [stdout, stderr, out401, err401, out_acc, err_acc]
    for p in [*out.rglob("*"), *(tmp_path / "other").rglob("*")]:
        if p.is_file():
            written.append(p.read_bytes().decode("latin-1"))
    for p in out.rglob("*.parquet"):
        written.append(str(pq.read_table(p).to_pylist()))
    blob = "\n".join(written)
    for s in secrets:
        assert s not in blob
    assert "retry" in stderr and "HTTP 401" in err401  # the logs scanned are the ones with errors in them
