"""Shared fixtures: a simulator on real loopback HTTP, harvest helpers, lake readers.

Nothing here depends on today's date: data sets use fixed days and harvests pass their own
``today``; the drift tests build their days relative to the clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvester.config import HarvestConfig
from harvester.errors import LockHeld
from harvester.harvest.run import harvest_async as harvest
from harvester.lake.lock import LakeLock
from harvester.records.schema import FIELDS, TS
from harvester.sim import Dataset, SimConfig, Simulator

DAY0 = dt.date(2026, 3, 1)
TODAY = dt.date(2026, 3, 20)  # the harvester's "today" in tests with fixed days
# For subprocess runs, which take the real clock: days safely in the past, whatever today is.
PAST = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=10)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def start_sim() -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await start_sim(SimConfig(...))`` → a running Simulator (stopped after)."""
    sims: list[Simulator] = []

    async def start(config: SimConfig | None = None, ssl_context: Any = None, **kw: Any) -> Simulator:
        sim = Simulator(config or SimConfig(**kw))
        await sim.start(ssl_context=ssl_context)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        await sim.stop()


def config_for(sim: Simulator, out: Path, **kw: Any) -> HarvestConfig:
    """A harvest config against ``sim`` covering its whole day span."""
    days = sim.data.day_list
    base: dict[str, Any] = {
        "base_url": sim.base_url,
        "auth_id": sim.config.auth_id,
        "auth_token": sim.config.auth_token,
        "out": out,
        "start_date": days[0],
        "end_date": days[-1],
        "today": TODAY,
        "rate": None,
        "concurrency": 16,
        # Most tests are about one customer-day at a time; tests/test_layout.py (and those
        # that pass fetch=) run the partner feed, the default's choice.
        "fetch": "per-customer",
        "filters": MappingProxyType({}),
    }
    if "filters" in kw:
        kw["filters"] = MappingProxyType(dict(kw["filters"]))
    base.update(kw)
    return HarvestConfig(**base)


async def run_harvest(sim: Simulator, out: Path, **kw: Any) -> dict[str, Any]:
    return await harvest(config_for(sim, out, **kw))


def iso_z(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def normalize(rec: dict[str, Any]) -> dict[str, Any]:
    """A simulator record as the lake should hold it (ints/floats widened)."""
    out = {}
    for name, kind in FIELDS:
        v = rec[name]
        if kind == "float" and v is not None:
            v = float(v)
        out[name] = v
    return out


def all_records(sim: Simulator) -> list[dict[str, Any]]:
    """Every record of the simulator's data set (all customers, all days), newest first."""
    return sim.data.records([c.auth_id for c in sim.data.customer_list], sim.data.day_list)


def lake_rows(out: Path) -> list[dict[str, Any]]:
    """Every row of the lake, read back with DuckDB, timestamps as the API's ISO strings."""
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true)")
    table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    rows = table.to_pylist()
    ts = {name for name, kind in FIELDS if kind == TS}
    for r in rows:
        for name in ts:
            r[name] = iso_z(r[name])
    return rows


def assert_lake_equals(out: Path, expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lake holds exactly ``expected``: same uuids, no duplicates, every field equal."""
    rows = lake_rows(out)
    uuids = [r["uuid"] for r in rows]
    assert len(uuids) == len(set(uuids)), "duplicate uuids in the lake"
    want = {r["uuid"]: normalize(r) for r in expected}
    assert set(uuids) == set(want), (
        f"missing {len(set(want) - set(uuids))}, unexpected {len(set(uuids) - set(want))}"
    )
    for r in rows:
        got = {name: r[name] for name, _ in FIELDS}
        assert got == want[r["uuid"]], f"record {r['uuid']} differs"
        assert r["_extra"] is None
        assert str(r["date"]) == r["start_time"][:10], "partition day is the query day"
    return rows


def shard_record(out: Path, day: dt.date | str, who: str) -> dict[str, Any] | None:
    """A shard's committed record: in its day's manifest, or staged (not yet folded)."""
    day = str(day)
    staged = out / f"_staging/date={day}/{who}.json"
    if staged.exists():
        return orjson.loads(staged.read_bytes())
    doc = out / f"_manifest/date={day}.json"
    return orjson.loads(doc.read_bytes())["shards"].get(who) if doc.exists() else None


def committed_keys(out: Path) -> set[str]:
    """Every committed shard (``day/who``), folded or staged."""
    keys = set()
    for doc in out.glob("_manifest/date=*.json"):
        day = doc.name.removeprefix("date=").removesuffix(".json")
        keys |= {f"{day}/{who}" for who in orjson.loads(doc.read_bytes())["shards"]}
    keys |= {f"{p.parent.name.removeprefix('date=')}/{p.stem}" for p in out.glob("_staging/date=*/*.json")}
    return keys


def day_blocks(path: Path) -> list[tuple[str, pa.Table]]:
    """A day file's blocks (who, rows), from the map in its footer."""
    pf = pq.ParquetFile(path)
    table = pf.read()
    out, at = [], 0
    for who, n in orjson.loads(pf.metadata.metadata[b"vobiz.blocks"]):
        out.append((who, table.slice(at, n)))
        at += n
    assert at == table.num_rows, "the block map covers the file"
    return out


def no_temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


async def spawn(*args: str, env: dict[str, str] | None = None, **kw: Any) -> asyncio.subprocess.Process:
    """Start ``python -m harvester ARGS`` (no VOBIZ_* from the outer environment; ``kw`` for
    ``create_subprocess_exec``)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOBIZ_")}
    full_env.update(env or {})
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "harvester",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full_env,
        cwd=str(ROOT),
        **kw,
    )


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run ``python -m harvester ARGS`` in a subprocess; returns (code, stdout, stderr)."""
    proc = await spawn(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sim_args(sim: Simulator, out: Path, *extra: str) -> list[str]:
    """CLI args harvesting all of ``sim``'s days into ``out`` (credentials via env)."""
    days = sim.data.day_list
    return [
        "harvest",
        "--base-url",
        sim.base_url,
        "--start-date",
        days[0].isoformat(),
        "--end-date",
        days[-1].isoformat(),
        "--out",
        str(out),
        "--rate",
        "unlimited",
        "--fetch",  # as config_for: the feed is tested where a test asks for it
        "per-customer",
        *extra,
    ]


def sim_env(sim: Simulator, **more: str) -> dict[str, str]:
    return {"VOBIZ_AUTH_ID": sim.config.auth_id, "VOBIZ_AUTH_TOKEN": sim.config.auth_token, **more}


def dataset(**kw: Any) -> Dataset:
    kw.setdefault("end_date", DAY0 + dt.timedelta(days=kw.get("days", 3) - 1))
    return Dataset(**kw)


class Poller:
    """A reader polling the lake with DuckDB while it is written: every answer it saw."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        con = duckdb.connect()
        glob = f"{self.out}/**/*.parquet"
        while not self._stop.is_set():
            try:
                sql = f"SELECT count(*), count(DISTINCT uuid) FROM read_parquet('{glob}')"
                n, distinct = con.execute(sql).fetchall()[0]
            except duckdb.Error:  # e.g. no file yet
                continue
            self.seen.append((n, distinct))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def a_dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _paused_before_takeover(store: Any) -> tuple[threading.Event, threading.Event]:
    """Make ``store``'s taker wait once it has judged the lock stale, just before it acts on
    that (deletes the lock, or replaces it): a rival may act first. (judged, go)."""
    judged, go = threading.Event(), threading.Event()
    delete, create = store.delete, store.create_exclusive

    def pause() -> None:
        if not judged.is_set():
            judged.set()
            go.wait(10)

    def paused_delete(key: str) -> None:
        pause()
        delete(key)

    def paused_create(key: str, data: bytes, replacing: bytes | None = None) -> bool:
        if replacing is not None:
            pause()
            return create(key, data, replacing=replacing)
        return create(key, data)

    store.delete, store.create_exclusive = paused_delete, paused_create
    return judged, go


def race_for_a_stale_lock(late_store: Any, first_store: Any) -> None:
    """Two takers find one stale lock; the first takes it over while the other is about to.
    Only the first may hold the lock."""
    gone = {"pid": a_dead_pid(), "host": socket.gethostname(), "since": "x", "beat": 0}
    first_store.write("_lock", orjson.dumps(gone))
    judged, go = _paused_before_takeover(late_store)
    late = LakeLock(late_store, "_lock")
    refused: list[BaseException] = []

    def take_late() -> None:
        try:
            late.acquire()
        except LockHeld as e:
            refused.append(e)

    taker = threading.Thread(target=take_late)
    taker.start()
    assert judged.wait(10)
    first = LakeLock(first_store, "_lock")
    first.acquire()
    go.set()
    taker.join(10)
    assert first.held and not late.held and len(refused) == 1
    assert orjson.loads(first_store.read("_lock"))["token"] == first._token
