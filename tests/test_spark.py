"""The lake reads in PySpark local mode with nothing but ``spark.read.parquet(out)``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harvester.sim import SimConfig
from tests.conftest import dataset, run_harvest

pyspark = pytest.importorskip("pyspark", reason="pyspark not installed (pip install '.[spark]')")
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.skip("no Java runtime")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("vobiz-harvester-test")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    yield session
    session.stop()


async def test_spark_reads_the_lake(start_sim, tmp_path: Path, spark) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=3, calls_per_day=60)))
    out = tmp_path / "lake"
    rep = await run_harvest(sim, out)
    assert rep["exit_code"] == 0
    df = spark.read.parquet(str(out))
    ids = [c.auth_id for c in sim.data.customer_list]
    expected = sim.data.records(ids, sim.data.day_list)
    assert df.count() == len(expected)
    assert "date" in df.columns and len(df.columns) == 43 + 2  # 43 fields, _extra, date
    dtypes = dict(df.dtypes)
    assert dtypes["start_time"] == "timestamp" and dtypes["date"] == "date"
    assert dtypes["jitter"] == "double" and dtypes["failure_code"] == "string"
    uuids = {r["uuid"] for r in df.select("uuid").collect()}
    assert uuids == {r["uuid"] for r in expected}
    per_day = {str(r["date"]): r["count"] for r in df.groupBy("date").count().collect()}
    want: dict[str, int] = {}
    for r in expected:
        want[r["start_time"][:10]] = want.get(r["start_time"][:10], 0) + 1
    assert per_day == want
    first = df.orderBy("start_time").select("start_time").first()
    assert first is not None
    assert first["start_time"].strftime("%Y-%m-%dT%H:%M:%SZ") == min(r["start_time"] for r in expected)
