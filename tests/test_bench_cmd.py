"""``vobiz-harvest bench`` against the simulator: every level fetches the whole shard."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from harvester.sim import SimConfig
from tests.conftest import PAST, cli, dataset, sim_env


async def test_bench_levels_json_and_plot(start_sim, tmp_path: Path) -> None:
    sim = await start_sim(
        SimConfig(
            dataset=dataset(customers=2, days=1, calls_per_day=700, end_date=PAST), rate_limit=200, burst=2
        )
    )
    day = sim.data.day_list[0]
    cust = sim.data.customer_list[1].auth_id
    want = len(sim.data.shard(cust, day))
    png = tmp_path / "bench.png"
    args = [
        "bench",
        "--base-url",
        sim.base_url,
        "--date",
        day.isoformat(),
        "--customer",
        cust,
        "--levels",
        "1,2,4",
        "--json",
    ]
    pytest.importorskip("matplotlib")
    code, out, err = await cli(*args, "--plot", str(png), env=sim_env(sim))
    assert code == 0, err
    rep = orjson.loads(out)
    assert rep["shard"] == f"{day}/{cust}" and rep["total"] == want
    assert [r["concurrency"] for r in rep["levels"]] == [1, 2, 4]
    for r in rep["levels"]:
        assert r["records"] == want and r["pages"] == -(-want // 100)
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"] <= r["latency_ms_p99"]
        assert r["requests"] == r["pages"] + r["retries"]
    assert sum(r["throttled"] for r in rep["levels"]) == sim.stats["429"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p95 ms" in err  # the live table goes to stderr when stdout is JSON


async def test_bench_bad_levels_is_usage_error(start_sim) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, end_date=PAST)))
    code, _, err = await cli("bench", "--base-url", sim.base_url, "--levels", "1,x", env=sim_env(sim))
    assert code == 2 and "--levels" in err and len(err.strip().splitlines()) == 1
