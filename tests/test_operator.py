"""Operator experience: progress, summaries, dry run, single lookups, logs, config files."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios
from pathlib import Path

import orjson

from harvester.sim import SimConfig
from tests.conftest import PAST, ROOT, cli, dataset, sim_args, sim_env

JSON_KEYS = {
    "status", "exit_code", "error", "stopped", "lake", "scope", "start_date", "end_date", "accounts",
    "fetch", "fetch_note", "shards", "pages", "records", "bytes_written", "days_rewritten", "requests",
    "retries", "throttled", "elapsed_s",
    "records_per_s", "requests_per_s", "rate", "decode_workers", "unverified", "failed", "duckdb",
}  # fmt: skip
SHARD_KEYS = {"planned", "verified", "unverified", "failed", "skipped", "unchanged", "harvested",
              "reharvested", "rechecked"}  # fmt: skip


async def test_progress_bar_in_a_terminal(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=600, end_date=PAST), latency_ms=25)
    )
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a 200×50 terminal
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOBIZ_")} | sim_env(sim)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester",
        *sim_args(sim, tmp_path / "lake", "--concurrency", "2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=slave,
        env=env,
        cwd=str(ROOT),
    )
    os.close(slave)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = loop.run_in_executor(None, read)
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    await asyncio.wait_for(reader, 10)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\r" in screen and "shards " in screen
    assert "rec/s" in screen and "req/s (limit unlimited)" in screen and "×429" in screen
    assert "6/6" in screen  # the bar reached every shard
    assert "COMPLETE" in screen and sim.config.auth_token not in screen


async def test_no_tty_means_log_lines_not_a_bar(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(
        SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=400, end_date=PAST), latency_ms=20)
    )
    code, _, err = await cli(
        *sim_args(sim, tmp_path / "lake", "--concurrency", "1", "--progress-interval", "0.2"),
        env=sim_env(sim),
    )
    assert code == 0, err
    assert "progress: " in err and " shards, " in err and "\r" not in err
    quiet_code, _, quiet_err = await cli(*sim_args(sim, tmp_path / "l2", "--quiet"), env=sim_env(sim))
    assert quiet_code == 0 and quiet_err.strip() == ""


async def test_summary_table_and_json_keys(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=2, calls_per_day=90, end_date=PAST)))
    code, out, err = await cli(*sim_args(sim, tmp_path / "lake", "--json"), env=sim_env(sim))
    assert code == 0
    rep = orjson.loads(out)
    assert set(rep) == JSON_KEYS and set(rep["shards"]) == SHARD_KEYS
    assert rep["shards"]["verified"] == 4 and rep["records"] == len(
        sim.data.records([c.auth_id for c in sim.data.customer_list], sim.data.day_list)
    )
    for label in ("result", "shards", "records", "requests", "elapsed", "lake", "query"):
        assert f"  {label}" in err
    assert f"read_parquet('{tmp_path / 'lake'}/**/*.parquet', hive_partitioning=true)" in err


async def test_dry_run_writes_nothing_and_counts_requests(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=250, end_date=PAST)))
    out = tmp_path / "lake"
    code, stdout, err = await cli(
        *sim_args(sim, out, "--dry-run", "--probe", "--json", "--rate", "10"), env=sim_env(sim)
    )
    assert code == 0, err
    plan = orjson.loads(stdout)
    ids = [c.auth_id for c in sim.data.customer_list]
    shards = [sim.data.shard(a, d) for a in ids for d in sim.data.day_list]
    assert plan["shards"] == {"total": 6, "harvest": 6, "recheck": 0, "skip": 0}
    assert plan["requests"] == sum(max(1, -(-len(s) // 100)) for s in shards)
    assert plan["records"] == sum(len(s) for s in shards)
    assert plan["seconds_at_rate"] == round(plan["requests"] / 10, 1)
    assert not out.exists()
    code, text, _ = await cli(*sim_args(sim, out, "--dry-run"), env=sim_env(sim))
    assert code == 0 and "Dry run" in text and "at least 6" in text and not out.exists()


async def test_get_one_cdr_and_not_found(start_sim) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=30, end_date=PAST)))
    cust = sim.data.customer_list[1]
    rec = sim.data.shard(cust.auth_id, sim.data.day_list[0])[5]
    code, out, err = await cli(
        "get", rec["uuid"], "--customer", cust.auth_id, "--base-url", sim.base_url, env=sim_env(sim)
    )
    assert code == 0, err
    assert orjson.loads(out) == rec
    code, out, _ = await cli(
        "get",
        rec["uuid"],
        "--customer",
        cust.auth_id,
        "--base-url",
        sim.base_url,
        "--format",
        "table",
        env=sim_env(sim),
    )
    assert code == 0 and f"uuid                 {rec['uuid']}" in out
    # the account endpoint, with the customer's own credentials, unwraps {data, success}
    code, out, _ = await cli(
        "get",
        rec["uuid"],
        "--scope",
        "account",
        "--base-url",
        sim.base_url,
        env={"VOBIZ_AUTH_ID": cust.auth_id, "VOBIZ_AUTH_TOKEN": cust.auth_token},
    )
    assert code == 0 and orjson.loads(out)["uuid"] == rec["uuid"]
    code, out, err = await cli(
        "get",
        "00000000-0000-4000-8000-000000000000",
        "--customer",
        cust.auth_id,
        "--base-url",
        sim.base_url,
        env=sim_env(sim),
    )
    assert code == 1 and out == "" and err.count("\n") == 1 and "not found" in err


async def test_accounts_lists_every_page_without_tokens(start_sim) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=230, days=1, calls_per_day=1, end_date=PAST)))
    code, out, err = await cli("accounts", "--base-url", sim.base_url, "--json", env=sim_env(sim))
    assert code == 0, err
    accounts = orjson.loads(out)
    assert len(accounts) == 230 == len({a["auth_id"] for a in accounts})
    assert set(accounts[0]) == {
        "auth_id",
        "name",
        "timezone",
        "is_active",
        "enabled",
        "created_at",
        "currency",
    }
    code, table, _ = await cli("accounts", "--base-url", sim.base_url, env=sim_env(sim))
    assert code == 0 and "auth_id" in table.splitlines()[0] and "230 accounts" in table
    tokens = [c.auth_token for c in sim.data.customer_list]
    assert not any(t in out or t in table for t in tokens)


async def test_json_logs_to_a_file_one_line_per_retry(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(
        SimConfig(
            dataset=dataset(customers=1, days=1, calls_per_day=2500, end_date=PAST),
            fault_rate=0.3,
            fault_seed=2,
            slow_seconds=1.2,
        )
    )
    log = tmp_path / "run.log"
    code, _, err = await cli(
        *sim_args(
            sim,
            tmp_path / "lake",
            "--log-level",
            "info",
            "--log-format",
            "json",
            "--log-file",
            str(log),
            "--timeout",
            "1",
            "--quiet",
        ),
        env=sim_env(sim),
    )
    assert code == 0, err
    lines = [orjson.loads(line) for line in log.read_text().splitlines()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    retries = [x for x in lines if x["msg"].startswith("retry ")]
    assert len(retries) >= 3
    day = sim.data.day_list[0].isoformat()
    assert all(f"shard {day}/" in x["msg"] or "accounts" in x["msg"] for x in retries)
    assert sim.config.auth_token not in log.read_text()


async def test_config_file_with_flag_override(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=60, end_date=PAST)))
    ids = [c.auth_id for c in sim.data.customer_list]
    token_file = tmp_path / "token"
    token_file.write_text(sim.config.auth_token)
    cfg = tmp_path / "harvest.toml"
    cfg.write_text(
        f'base-url = "{sim.base_url}"\nauth-id = "{sim.config.auth_id}"\nauth_token_file = "{token_file}"\n'
        f'start-date = "{sim.data.day_list[0]}"\nend-date = "{sim.data.day_list[1]}"\n'
        f'out = "{tmp_path / "lake"}"\nrate = "unlimited"\nconcurrency = 4\n'
        f'customer = ["{ids[0]}", "{ids[1]}"]\n'
    )
    code, out, err = await cli("harvest", "--config", str(cfg), "--json")
    assert code == 0, err
    rep = orjson.loads(out)
    assert rep["accounts"] == 2 and rep["shards"]["planned"] == 4
    code, out, err = await cli(
        "harvest",
        "--config",
        str(cfg),
        "--json",
        "--customer",
        ids[2],
        "--end-date",
        str(sim.data.day_list[0]),
    )
    assert code == 0, err
    rep = orjson.loads(out)
    assert rep["accounts"] == 1 and rep["shards"]["planned"] == 1  # flags replace the file's values
    bad = tmp_path / "bad.toml"
    bad.write_text('auth_token = "x"\n')
    code, _, err = await cli("harvest", "--config", str(bad))
    assert code == 2 and "auth-token-file" in err and len(err.strip().splitlines()) == 1
    bad.write_text("concurency = 4\n")
    code, _, err = await cli("harvest", "--config", str(bad))
    assert code == 2 and "unknown key 'concurency'" in err


async def test_help_groups_flags_by_purpose() -> None:
    code, out, _ = await cli("harvest", "--help")
    assert code == 0
    for group in (
        "source and credentials",
        "what to harvest",
        "API filters",
        "throughput",
        "completeness",
        "output",
    ):
        assert f"{group}" in out
