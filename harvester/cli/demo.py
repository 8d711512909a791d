"""``vobiz-harvest demo``: start the simulator in-process, harvest it, query the lake."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import orjson

from harvester.config import HarvestConfig
from harvester.errors import EXIT_USAGE
from harvester.harvest import loop, report
from harvester.harvest.run import harvest_async
from harvester.sim import Dataset, SimConfig, Simulator

DEMO_QUERY = """
SELECT date, count(*) AS calls, count(DISTINCT account_id) AS customers,
       round(100.0 * count(*) FILTER (WHERE billsec > 0) / count(*), 1) AS answer_pct,
       sum(billsec) AS billsec, round(sum(total_cost), 2) AS cost_inr
FROM read_parquet('{glob}', hive_partitioning=true)
GROUP BY date ORDER BY date
"""


async def _run(out: Path) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date()
    end = today - dt.timedelta(days=1)
    sim = Simulator(SimConfig(dataset=Dataset(seed=7, customers=4, days=3, calls_per_day=400, end_date=end)))
    url = await sim.start()
    try:
        cfg = HarvestConfig(
            base_url=url,
            auth_id=sim.config.auth_id,
            auth_token=sim.config.auth_token,
            out=out,
            start_date=end - dt.timedelta(days=2),
            end_date=end,
            today=today,
            rate=None,
            filters=MappingProxyType({}),
        )
        return await harvest_async(cfg)
    finally:
        await sim.stop()


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="harvest from the embedded simulator and query the result")
    demo.add_argument("--out", type=Path, default=Path("demo-lake"))
    demo.add_argument("--json", action="store_true")


def command(args: Any) -> int:
    return demo(args.out, args.json)


def demo(out: Path, as_json: bool) -> int:
    """Harvest a small partner data set into ``out`` and print a DuckDB query over it."""
    print(
        f"Harvesting 4 customers × 3 days from the embedded Vobiz API simulator into {out}/ ...",
        file=sys.stderr,
    )
    rep = loop.run(_run(out))
    if rep["exit_code"] >= EXIT_USAGE:  # nothing harvested: the lake (if any) is not this demo's
        sys.stderr.write(f"vobiz-harvest: error: {rep['error']}\n")
        return int(rep["exit_code"])
    sys.stderr.write(report.render(rep) + "\n\n")
    if as_json:
        print(orjson.dumps(rep).decode())
        return int(rep["exit_code"])
    query = DEMO_QUERY.format(glob=f"{out}/**/*.parquet").strip()
    print(f"duckdb> {' '.join(query.split())}\n")
    print(duckdb.sql(query))
    return int(rep["exit_code"])
