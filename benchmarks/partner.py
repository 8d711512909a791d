"""``python -m benchmarks --scenario partner``: a real partner's shape.

2,000 customers with lognormal volumes (most make a handful of calls a day) over 30 days,
harvested with the default ``--fetch auto``. Reported: requests per 1,000 records against
the fewest the API allows (the listing's pages plus each day's feed pages), files per day,
bytes per record and a DuckDB aggregate against one zstd Parquet file of the same rows, peak
memory of the harvester's processes, a nightly run over the 30-day lake against one over a
3-day lake (median of 5, alternating; on a local disk and on S3, with the store's calls),
and the peak memory of planning 100k shards against 1k.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from benchmarks.run import END, ROOT, S3, TOKEN, Scenario, Sim, _client
from harvester.config import HarvestConfig
from harvester.harvest.plan import plan
from harvester.sim import Dataset

CUSTOMERS, DAYS, CALLS = 2000, 30, 8
AGGREGATE = (
    "SELECT date, count(*), sum(total_cost) FROM read_parquet('{}', hive_partitioning=true) GROUP BY date"
)


def _nightly(sim: Sim, out: Path | str, s3: S3 | None = None) -> tuple[float, int, int]:
    """The nightly command (yesterday, re-checking the two days before) into ``out`` (a
    directory, or an ``s3://`` lake on ``s3``): seconds, API requests, object-store calls."""
    env = {"VOBIZ_AUTH_ID": "PA_SIMULATOR", "VOBIZ_AUTH_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "harvester", "harvest", "--base-url", sim.url, "--out", str(out)]
    cmd += ["--start-date", END.isoformat(), "--end-date", END.isoformat(), "--lookback", "2"]
    cmd += ["--rate", "unlimited", "--json", "--quiet"]
    if s3 is not None:
        cmd += ["--s3-endpoint-url", s3.url]
    calls = s3.calls if s3 is not None else 0
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, check=True
    )
    seconds = time.perf_counter() - t0
    rep = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, int(rep["requests"]), (s3.calls - calls) if s3 is not None else 0


def _nightlies(
    sim: Sim, a: Path | str, b: Path | str, s3: S3 | None = None, rounds: int = 5
) -> tuple[tuple[float, int, int], tuple[float, int, int]]:
    """The nightly command over lakes ``a`` and ``b``, alternating, ``rounds`` times each:
    the median seconds of each, with the requests and store calls of its last run (a nightly
    re-run does the same work: every day it looks at is committed and unchanged)."""
    of_a: list[tuple[float, int, int]] = []
    of_b: list[tuple[float, int, int]] = []
    for _ in range(rounds):
        of_a.append(_nightly(sim, a, s3))
        of_b.append(_nightly(sim, b, s3))

    def median(runs: list[tuple[float, int, int]]) -> tuple[float, int, int]:
        return statistics.median(r[0] for r in runs), runs[-1][1], runs[-1][2]

    return median(of_a), median(of_b)


def _best(sql: str) -> float:
    con = duckdb.connect()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        con.sql(sql).fetchall()
        times.append(time.perf_counter() - t0)
    return min(times)


def _plan_peak(customers: int, days: int) -> float:
    """Peak bytes (tracemalloc) of planning ``customers`` × ``days`` shards on an empty lake."""
    cfg = HarvestConfig(
        base_url="http://127.0.0.1:1",
        auth_id="PA_X",
        auth_token="t",
        out="unused",
        start_date=END - dt.timedelta(days=days - 1),
        end_date=END,
        today=END + dt.timedelta(days=1),
        filters=MappingProxyType({}),
        fetch="per-customer",
    )
    accounts = [f"MA_{i:08d}" for i in range(customers)]
    tracemalloc.start()
    shards = sum(1 for _ in plan(cfg, accounts, {}))  # the engine's lanes consume it so
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert shards == customers * days
    return peak


def run(work: Path) -> dict[str, Any]:
    data = Dataset(
        seed=7,
        customers=CUSTOMERS,
        days=DAYS,
        calls_per_day=CALLS,
        end_date=END,
        volumes="lognormal",
        cache_records=0,
    )
    per_day = [sum(data.count(c.auth_id, d) for c in data.customer_list) for d in data.day_list]
    records = sum(per_day)
    fewest = math.ceil(CUSTOMERS / 100) + sum(math.ceil(n / 100) for n in per_day)
    print(f"[partner] {CUSTOMERS} customers × {DAYS} days, {records:,} records", file=sys.stderr)
    sc = Scenario("partner", CUSTOMERS, DAYS, CALLS, ["harvester"], runs=1, volumes="lognormal")
    sim = Sim(sc)
    try:
        full = _client("harvester", sim, sc, work / "lake")
        three = Scenario("partner", CUSTOMERS, 3, CALLS, ["harvester"])
        _client("harvester", sim, three, work / "lake3")
        for name in ("lake", "lake3"):
            shutil.copytree(work / name, work / f"{name}-before-nightly")
        night30, night3 = _nightlies(sim, work / "lake", work / "lake3")
        # The same two lakes on an object store (moto, counting the requests it answers),
        # as they were before the local nightly runs above.
        s3 = S3()
        try:
            s3.upload(work / "lake-before-nightly", "lake30")
            s3.upload(work / "lake3-before-nightly", "lake3")
            s3_night30, s3_night3 = _nightlies(sim, "s3://bench/lake30", "s3://bench/lake3", s3)
        finally:
            s3.stop()
    finally:
        sim.stop()
    lake = work / "lake"
    files = sorted(lake.rglob("*.parquet"))
    lake_bytes = sum(f.stat().st_size for f in files)
    single = work / "single.parquet"
    table = pads.dataset([str(f) for f in files], format="parquet").to_table()
    pq.write_table(table.replace_schema_metadata(None), single, compression="zstd")
    assert table.num_rows == records, (table.num_rows, records)
    agg_lake = _best(AGGREGATE.format(f"{lake}/**/*.parquet"))
    agg_single = _best(AGGREGATE.replace(", hive_partitioning=true", "").replace("date,", "start_time::date,")
                       .replace("GROUP BY date", "GROUP BY 1").format(single))  # fmt: skip
    small, large = _plan_peak(1000, 1), _plan_peak(1000, 100)  # 1k and 100k shards: days grow
    return {
        "scenario": "partner",
        "customers": CUSTOMERS,
        "days": DAYS,
        "records": records,
        "requests": full["requests"],
        "fewest_requests": fewest,
        "requests_per_1000_records": round(full["requests"] / records * 1000, 2),
        "fewest_per_1000_records": round(fewest / records * 1000, 2),
        "requests_vs_fewest": round(full["requests"] / fewest, 3),
        "files_per_day": round(len(files) / DAYS, 2),
        "bytes_per_record": round(lake_bytes / records, 1),
        "single_file_bytes_per_record": round(single.stat().st_size / records, 1),
        "duckdb_aggregate_s": round(agg_lake, 4),
        "duckdb_aggregate_single_file_s": round(agg_single, 4),
        "harvest_s": full["elapsed_s"],
        "records_per_s": full["records_per_s"],
        "cpu_s_per_m_records": full["cpu_s_per_m_records"],
        "peak_memory_mb": full["peak_memory_mb"],
        "simulator_cpu_s": full["sim_cpu_s"],
        "nightly_30_day_lake_s": round(night30[0], 2),
        "nightly_3_day_lake_s": round(night3[0], 2),
        "nightly_requests_30_vs_3": [night30[1], night3[1]],
        "nightly_s3_30_day_lake_s": round(s3_night30[0], 2),
        "nightly_s3_3_day_lake_s": round(s3_night3[0], 2),
        "nightly_s3_store_calls_30_vs_3": [s3_night30[2], s3_night3[2]],
        "nightly_s3_requests_30_vs_3": [s3_night30[1], s3_night3[1]],
        "plan_peak_mb_1k_shards": round(small / 2**20, 2),
        "plan_peak_mb_100k_shards": round(large / 2**20, 2),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
