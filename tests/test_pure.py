"""Unit tests of the pure parts, as specifications: planning, pacing with a fake clock,
dedupe and order, coercions, the day-window reading, manifest records."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvester.api.pacing import AutoRate, FixedRate, Pacer, make_pacer
from harvester.config import HarvestConfig, auto_workers, quota_cores, validate
from harvester.errors import UsageError
from harvester.harvest import window
from harvester.harvest.fetch import Fetcher
from harvester.harvest.plan import HARVEST, RECHECK, SKIP, manifest_days, plan
from harvester.harvest.run import harvest_async, starting_rate
from harvester.lake.lake import Lake
from harvester.records.assemble import dedupe, order
from harvester.records.decode import _LOST, _to_float, _to_int, _to_str, _to_ts
from harvester.records.schema import SCHEMA
from harvester.records.shard import Shard

D = dt.date(2026, 3, 10)


def _cfg(**kw: Any) -> HarvestConfig:
    base: dict[str, Any] = {
        "base_url": "http://127.0.0.1:1",
        "auth_id": "PA_X",
        "auth_token": "t",
        "out": Path("lake"),
        "start_date": D,
        "end_date": D,
        "today": D + dt.timedelta(days=1),
        "filters": MappingProxyType({}),
    }
    return HarvestConfig(**{**base, **kw})


# -- planning ----------------------------------------------------------------------------------
def test_plan_modes_from_the_manifest() -> None:
    prior = {
        f"{D}/A": {"verified": True, "scope": "partner", "date": str(D), "account": "A"},
        f"{D}/B": {"verified": False, "scope": "partner", "date": str(D), "account": "B"},
        f"{D - dt.timedelta(days=1)}/A": {"verified": True},
        # committed while its day was open, outside the range asked: re-checked anyway
        f"{D - dt.timedelta(days=5)}/C": {
            "open_day": True,
            "scope": "partner",
            "date": "2026-03-05",
            "account": "C",
        },
    }
    got = {(p.shard.day, p.shard.who): p.mode for p in plan(_cfg(lookback=1), ["A", "B"], prior)}
    assert got == {
        (D, "A"): SKIP,
        (D, "B"): HARVEST,
        (D - dt.timedelta(days=1), "A"): RECHECK,  # in the lookback
        (D - dt.timedelta(days=1), "B"): HARVEST,
        (dt.date(2026, 3, 5), "C"): RECHECK,
    }
    gone = {**prior, f"{D}/A": {**prior[f"{D}/A"], "file_missing": True}}
    assert next(plan(_cfg(), ["A"], gone)).mode == HARVEST  # committed, but its file is gone
    refresh = list(plan(_cfg(refresh=True), ["A", "B"], prior))
    assert {p.mode for p in refresh} == {HARVEST} and len(refresh) == 2


def test_plan_is_newest_day_first_and_global_is_one_shard_a_day() -> None:
    got = list(plan(_cfg(start_date=D - dt.timedelta(days=2), scope="global"), [None], {}))
    assert [p.shard for p in got] == [Shard(D - dt.timedelta(days=n), "global", None) for n in range(3)]


def test_plan_reads_new_days_through_the_feed_and_keeps_how_a_day_was_read() -> None:
    d1, d2, d3 = D, D - dt.timedelta(days=1), D - dt.timedelta(days=2)
    prior = {
        f"{d2}/global": {"verified": True, "scope": "global", "date": str(d2)},  # read via the feed
        f"{d3}/A": {"verified": True, "scope": "partner", "date": str(d3), "account": "A"},  # half-way
    }
    got = [
        (p.shard.day, p.shard.who, p.mode) for p in plan(_cfg(start_date=d3), ["A", "B"], prior, feed=True)
    ]
    assert got == [
        (d1, "global", HARVEST),  # a new day: one feed shard, not one per customer
        (d2, "global", SKIP),
        (d3, "B", HARVEST),  # a day begun customer by customer goes on so: A is not fetched again
        (d3, "A", SKIP),
    ]
    # Split over workers, the parts are disjoint and together the whole plan.
    parts = [
        list(plan(_cfg(start_date=d3, partition=(i, 3)), ["A", "B"], prior, feed=True)) for i in range(3)
    ]
    assert sorted((p.shard.day, p.shard.who) for part in parts for p in part) == sorted(
        (d, w) for d, w, _ in got
    )


def test_the_plan_is_a_stream_a_day_at_a_time() -> None:
    accounts = [f"MA_{i}" for i in range(100)]
    stream = plan(_cfg(start_date=D - dt.timedelta(days=99)), accounts, {})
    first = [next(stream) for _ in range(100)]
    assert {p.shard.day for p in first} == {D}  # a day's shards, before the next day is built
    assert sum(1 for _ in stream) == 99 * 100


def test_planning_100_days_takes_no_more_memory_than_planning_one() -> None:
    accounts = [f"MA_{i:08d}" for i in range(1000)]

    def peak(n_days: int) -> int:
        tracemalloc.start()
        n = sum(1 for _ in plan(_cfg(start_date=D - dt.timedelta(days=n_days - 1)), accounts, {}))
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == 1000 * n_days
        return top

    one, hundred = peak(1), peak(100)
    assert hundred <= 1.2 * one, (one, hundred)  # a day's shards at a time, never two days'


# -- memory held ---------------------------------------------------------------------------------
async def test_two_large_shards_are_held_at_once_and_small_ones_share_one_stream_rows() -> None:
    fetcher = Fetcher(_cfg(stream_rows=1000), None, None, None, None)  # type: ignore[arg-type]
    held: list[str] = []

    async def hold(name: str, rows: int, until: asyncio.Event) -> None:
        async with fetcher._holding(rows):
            held.append(name)
            await until.wait()

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    big1, big2, big3, small = (asyncio.Event() for _ in range(4))
    tasks = [asyncio.ensure_future(hold(n, r, e)) for n, r, e in [("big1", 1000, big1), ("big2", 900, big2)]]
    await settle()
    tasks.append(asyncio.ensure_future(hold("big3", 800, big3)))
    tasks += [asyncio.ensure_future(hold(f"small{i}", 100, small)) for i in range(3)]
    await settle()
    assert held == ["big1", "big2"]  # a third would put 2,700 rows in memory: it waits
    big1.set()
    await settle()
    assert held[2] == "big3" and "small0" not in held  # 900 + 800 held: no room for 100 more
    big2.set()
    await settle()
    assert set(held[3:]) == {"small0", "small1"}  # 800 + 100 + 100 ≤ 1,000; a third would not fit
    big3.set()
    small.set()
    await asyncio.gather(*tasks)
    assert sorted(held) == ["big1", "big2", "big3", "small0", "small1", "small2"]


# -- pacing --------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_auto_rate_grows_then_settles_under_the_answered_rate() -> None:
    clock = Clock()
    rate = AutoRate(start=5.0, clock=clock)
    for _ in range(8):  # 2 s of successes: slow start doubles every second
        clock.t += 0.25
        rate.on_success()
    assert rate.current == pytest.approx(5.0 * 2.0**2, rel=0.01)
    for _ in range(16):  # the server answers 16 in the last second, whatever was asked
        clock.t += 1 / 16
        rate.on_success()
    asked = rate.current
    assert asked > 16
    rate.on_throttle(None)
    # The ceiling is what was answered (16/s), a little under once refused at the target;
    # the rate 90% of it.
    answered = 17  # the 16, and the one at the window's edge
    assert rate.current == pytest.approx(0.9 * answered)
    assert 0.97 * answered <= rate.ceiling <= answered < asked  # type: ignore[operator]
    rate.on_throttle(None)  # the same burst (within 1 s): cut once
    assert rate.current == pytest.approx(0.9 * answered)
    for _ in range(400):  # 100 s without a 429: creeps back up, the ceiling is raised slowly
        clock.t += 0.25
        rate.on_success()
    assert answered < rate.current < 2 * answered


REAL_SLEEP = asyncio.sleep


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``asyncio.sleep`` asked from now on, none slept (each only yields once)."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)
        await REAL_SLEEP(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return asked


async def test_a_cut_sends_waiting_requests_back_for_a_slot_at_the_new_rate(slept: list[float]) -> None:
    clock = Clock()  # time stands still: only the slots taken are looked at
    rate = AutoRate(start=4.0, clock=clock)
    await rate.acquire()  # slot 0; the next is 0.25 s later
    waiting = asyncio.ensure_future(rate.acquire())
    await REAL_SLEEP(0)
    assert slept == [0.25]  # it waits for its slot at 4/s...
    rate.on_throttle(2.0)  # ...when a 429 names 2/s: 1.9/s from now on
    await waiting
    assert slept == [0.25, pytest.approx(1 / 1.9)]  # a new slot: one interval at the new rate


def test_auto_rate_takes_a_named_limit() -> None:
    clock = Clock()
    rate = AutoRate(start=30.0, clock=clock)
    rate.on_throttle(20.0)
    assert rate.named and rate.ceiling == 20.0 and rate.current == pytest.approx(19.0)


async def test_auto_rate_spaces_requests_by_its_rate(slept: list[float]) -> None:
    clock = Clock()
    rate = AutoRate(start=10.0, clock=clock)
    for _ in range(3):
        await rate.acquire()
    assert slept == pytest.approx([0.1, 0.2])  # slots 0, 0.1, 0.2 s from a clock that stood still


def test_make_pacer() -> None:
    assert type(make_pacer(None)) is Pacer and make_pacer("unlimited").rate is None
    assert isinstance(make_pacer("auto"), AutoRate)
    fixed = make_pacer(20.0)
    assert isinstance(fixed, FixedRate) and fixed.rate == 20.0 and fixed.describe() == "20/s"


# -- dedupe and order ---------------------------------------------------------------------------------
def test_dedupe_keeps_the_latest_update_and_order_is_newest_first() -> None:
    t = pa.table(
        {
            "uuid": ["a", "b", "a", "c"],
            "updated_at": pa.array([1, 5, 3, 2], pa.timestamp("us", "UTC")),
            "start_time": pa.array([10, 30, 10, 20], pa.timestamp("us", "UTC")),
            "account_id": ["Y", "X", "Y", "X"],
        }
    )
    one = dedupe(t)
    assert sorted(one.column("uuid").to_pylist()) == ["a", "b", "c"]
    assert {r["uuid"]: r["updated_at"].timestamp() * 1e6 for r in one.to_pylist()}["a"] == 3
    assert order(one).column("uuid").to_pylist() == ["b", "c", "a"]
    assert order(one, by_account=True).column("uuid").to_pylist() == ["b", "c", "a"]
    assert order(one, by_account=True).column("account_id").to_pylist() == ["X", "X", "Y"]


# -- coercions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fn", "value", "want"),
    [
        (_to_int, "42", 42),
        (_to_int, 7.0, 7),
        (_to_int, 7.5, _LOST),
        (_to_int, "1e3", 1000),
        (_to_int, "99999999999999999999", _LOST),
        (_to_int, 2**63, _LOST),
        (_to_int, True, 1),
        (_to_float, "0.25", 0.25),
        (_to_float, "NaN", _LOST),
        (_to_float, "inf", _LOST),
        (_to_float, [1], _LOST),
        (_to_str, 16, "16"),
        (_to_str, {"b": 1, "a": 2}, '{"a":2,"b":1}'),
        (_to_ts, "2026-03-25T10:00:00+05:30", dt.datetime(2026, 3, 25, 4, 30, tzinfo=dt.UTC)),
        (_to_ts, "yesterday", _LOST),
    ],
)
def test_coercions(fn: Any, value: Any, want: Any) -> None:
    assert fn(value) == want if want is not _LOST else fn(value) is _LOST


# -- the day window -----------------------------------------------------------------------------------
def _totals(inclusive: bool, lag_first: int = 0) -> Any:
    """A server's totals for day ranges: 10 calls a day; the first ``lag_first`` one-day
    answers lag (0)."""
    lagged = {"n": 0}

    async def total(shard: Shard, start: dt.date, end: dt.date) -> int:
        days = (end - start).days + (1 if inclusive else 0)
        if start == end and lagged["n"] < lag_first:
            lagged["n"] += 1
            return 0
        return 10 * days

    return total


async def test_window_needs_two_agreeing_probes() -> None:
    shards = [Shard(D - dt.timedelta(days=n), "partner", "A") for n in range(1, 4)]
    assert await window.learn(None, shards, _totals(inclusive=True)) == ("inclusive", True)
    assert await window.learn(None, shards, _totals(inclusive=False)) == ("exclusive", True)
    # One lagging probe reads as exclusive: not believed, and not recorded.
    assert await window.learn(None, shards, _totals(inclusive=True, lag_first=2)) == ("inclusive", True)
    assert await window.learn(None, shards[:1], _totals(inclusive=True, lag_first=2)) == ("inclusive", False)
    # A recorded "exclusive" is re-checked; "inclusive" is kept without a probe.
    assert await window.learn("exclusive", shards, _totals(inclusive=True)) == ("inclusive", True)
    assert await window.learn("inclusive", [], _totals(inclusive=False)) == ("inclusive", False)


# -- manifest records -----------------------------------------------------------------------------------
def test_manifest_records_round_trip_fold_and_a_torn_one_reads_as_absent(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.open({"scope": "partner", "filters": {}})
    shard, other = Shard(D, "partner", "MA_1"), Shard(D, "partner", "MA_2")
    table = pa.Table.from_pylist(
        [{"uuid": f"u{i}", "account_id": "MA_1", "start_time": None} for i in range(3)], SCHEMA
    )
    lake.write_file(shard, table)
    lake.commit(shard, {"shard": shard.key, "rows": 3, "verified": True})
    lake.commit(other, {"shard": other.key, "rows": 0, "verified": True})  # an empty shard
    staged = {"shard": shard.key, "rows": 3, "verified": True, "file_missing": False}
    assert lake.committed(shard) == staged
    assert sorted(r["shard"] for r in lake.manifest([D])) == [shard.key, other.key]
    assert lake.manifest([D - dt.timedelta(1)]) == []
    assert lake.fold(D, {}, set()) and not lake.fold(D, {}, set())  # nothing staged the second time
    folded = lake.committed(shard)
    assert (
        folded is not None and folded["file"] == "date=2026-03-10/cdr.parquet" and not folded["file_missing"]
    )
    assert pq.read_table(tmp_path / "lake" / folded["file"]).column("uuid").to_pylist() == ["u0", "u1", "u2"]
    (tmp_path / "lake" / folded["file"]).unlink()  # rows gone: the record says so
    assert lake.committed(shard)["file_missing"] is True  # type: ignore[index]
    lake.commit(shard, {"shard": shard.key, "rows": 3, "verified": True})
    (tmp_path / "lake" / f"_staging/date={D}/MA_1.json").write_text('{"shard": ')  # torn
    assert lake.committed(shard)["file_missing"] is True  # type: ignore[index]  # the folded one
    lake.close()
    assert (tmp_path / "lake" / "_lake.json").exists() and not (tmp_path / "lake" / "_lock").exists()


def test_a_lake_that_committed_nothing_leaves_no_directory(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    lake.open({"scope": "partner", "filters": {}})
    lake.close()
    assert not (tmp_path / "lake").exists()


def test_a_run_reads_the_manifest_of_its_days_only() -> None:
    got = manifest_days(_cfg(start_date=D - dt.timedelta(days=30), end_date=D - dt.timedelta(days=29)))
    assert got[0] == D - dt.timedelta(days=30) and len(got) == 2 + 8  # the span, and the last week


def test_a_spill_gives_back_its_pages_in_order_and_refuses_past_its_cap(tmp_path: Path) -> None:
    from harvester.errors import DecodeError
    from harvester.harvest.pool import Spill, _read_back

    spill = Spill(str(tmp_path), cap=1000)
    spill.add(2, b"b" * 300)  # pages arrive in any order; they are read back in page order
    spill.add(1, b"a" * 400)
    assert list(_read_back(spill.path, spill.spans())) == [b"a" * 400, b"b" * 300]
    with pytest.raises(DecodeError, match="past 0 MB"):
        spill.add(3, b"c" * 301)  # 1,001 bytes: a server sending far more than a day holds
    spill.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("v2", "v1_quota", "v1_period", "cores"),
    [
        ("max 100000\n", None, None, None),  # v2, no quota
        ("200000 100000\n", None, None, 2),
        ("150000 100000", None, None, 1),  # 1.5 cores: one whole core
        ("50000 100000", None, None, 1),  # half a core: still one
        (None, "-1", "100000", None),  # v1, no quota
        (None, "300000\n", "100000\n", 3),
        (None, None, None, None),  # no cgroup files at all
        ("garbage", None, None, None),
        ("0 100000", None, None, None),
    ],
)
def test_quota_cores_reads_cgroup_v1_and_v2(v2: Any, v1_quota: Any, v1_period: Any, cores: Any) -> None:
    assert quota_cores(v2, v1_quota, v1_period) == cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_auto_workers_counts_the_cores_this_process_may_use() -> None:
    """A process allowed one core (taskset, a container's cpuset) starts no decode workers,
    however many cores the machine has."""
    code = "from harvester.config import auto_workers, usable_cores; print(usable_cores(), auto_workers())"
    one = min(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "0"]


@pytest.mark.parametrize(
    ("asked", "rate", "want"),
    [
        ("auto", None, "cores"),  # no limit: pages come as fast as the server answers
        ("auto", 100.0, "cores"),
        ("auto", 99.0, 0),
        ("auto", 0.0, 0),  # --rate auto before it has climbed
        ("AUTO", 20.0, 0),
        ("2", 20.0, 2),  # a number asked for is started whatever the rate
        (1, None, 1),
        (0, None, 0),
    ],
)
def test_decode_workers_run_only_while_requests_come_fast(asked: Any, rate: Any, want: Any) -> None:
    cfg = _cfg(decode_workers=asked)
    assert cfg.workers_at(rate) == (auto_workers() if want == "cores" else want)


@pytest.mark.parametrize(("rate", "want"), [(None, None), ("unlimited", None), ("auto", 0.0), (20.0, 20.0)])
def test_the_rate_a_run_starts_at(rate: Any, want: Any) -> None:
    assert starting_rate(_cfg(rate=rate)) == want


@pytest.mark.parametrize(("rate", "want"), [("AUTO", "auto"), ("unlimited", None), ("20", 20.0), (20, 20.0)])
def test_validate_reads_a_rate_given_as_text_or_a_number(rate: Any, want: Any) -> None:
    assert validate(_cfg(rate=rate)).rate == want


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rate": "fast"}, "--rate"),
        ({"concurrency": 10_000}, "--concurrency"),
        ({"per_page": 500}, "--per-page"),
        ({"base_url": "http://api.example.com"}, "plain http to a remote host"),  # the token in clear
        ({"base_url": "https://user:pw@api.example.com"}, "carries a user or password"),
        ({"partition": (3, 3)}, "--partition 3/3 is out of range"),
    ],
)
async def test_the_library_checks_settings_as_the_command_line_does(change: Any, named: str) -> None:
    """``harvest_async`` (and ``harvest``) refuse what the command line refuses, with the
    same one line, before any request (the base URL here answers nothing)."""
    with pytest.raises(UsageError, match=named):
        await harvest_async(_cfg(**change))


def test_validate_gives_the_base_url_the_run_uses() -> None:
    assert validate(_cfg(base_url="https://api.vobiz.ai/")).base_url == "https://api.vobiz.ai"
    insecure = validate(_cfg(base_url="http://api.example.com", insecure=True))
    assert insecure.base_url == "http://api.example.com"
