"""``vobiz-harvest compact``: a lake of the earlier layout (one file and one record per
customer-day) becomes one file per day, exactly, idempotently, and survives a kill."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from harvester.records.encoding import parquet_bytes
from harvester.sim import SimConfig
from tests.conftest import (
    PAST,
    Poller,
    all_records,
    assert_lake_equals,
    cli,
    dataset,
    day_blocks,
    sim_args,
    sim_env,
)


async def _old_lake(start_sim, out: Path, days: int = 3) -> object:
    """A lake as the release before one-file-a-day wrote it: harvested, then laid out again
    as ``date=D/cdr-<who>.parquet`` with ``_manifest/date=D/<who>.json`` and format 1."""
    ds = dataset(customers=4, days=days, calls_per_day=60, end_date=PAST)
    ds.counts[(ds.customer_list[3].auth_id, ds.day_list[1].isoformat())] = 0  # an empty shard
    sim = await start_sim(SimConfig(dataset=ds))
    code, _, err = await cli(*sim_args(sim, out, "--fetch", "per-customer"), env=sim_env(sim))
    assert code == 0, err
    for doc_path in sorted(out.glob("_manifest/date=*.json")):
        doc = orjson.loads(doc_path.read_bytes())
        day = doc["date"]
        blocks = dict(day_blocks(out / f"date={day}/cdr.parquet")) if doc["file"] else {}
        for who, rec in doc["shards"].items():
            file = f"date={day}/cdr-{who}.parquet" if rec["rows"] else None
            if file:
                (out / file).write_bytes(
                    parquet_bytes(blocks[who].replace_schema_metadata(None)).to_pybytes()
                )
            (out / f"_manifest/date={day}").mkdir(exist_ok=True)
            (out / f"_manifest/date={day}/{who}.json").write_bytes(orjson.dumps({**rec, "file": file}))
        (out / f"date={day}/cdr.parquet").unlink(missing_ok=True)
        doc_path.unlink()
    ident = orjson.loads((out / "_lake.json").read_bytes())
    (out / "_lake.json").write_bytes(orjson.dumps({**ident, "format": 1}))
    assert len(list(out.rglob("cdr-*.parquet"))) == 4 * days - 1
    assert_lake_equals(out, all_records(sim))
    return sim


def _read(out: Path) -> tuple[int, int]:
    """What a reader of the lake counts now: rows and distinct uuids, by DuckDB's glob."""
    sql = f"SELECT count(*), count(DISTINCT uuid) FROM read_parquet('{out}/**/*.parquet')"
    n, distinct = duckdb.sql(sql).fetchall()[0]
    return int(n), int(distinct)


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


async def test_compact_converts_exactly_once_and_the_next_run_fetches_nothing(
    start_sim, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out)
    code, _, err = await cli(*sim_args(sim, out), env=sim_env(sim))  # refused, naming the fix
    assert code == 2 and "compact --out" in err
    code, stdout, err = await cli("compact", "--out", str(out), "--json")
    assert code == 0, err
    facts = orjson.loads(stdout)
    assert (facts["days"], facts["shards"], facts["files_before"], facts["files_after"]) == (3, 12, 11, 3)
    assert facts["days_swapped_in_one_step"] == 3 and facts["not_atomic"] is None
    assert not (tmp_path / ".lake.compacting").exists() and not (out / "_compact").exists()
    assert_lake_equals(out, all_records(sim))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet")) == [
        f"date={d}/cdr.parquet"
        for d in sim.data.day_list  # type: ignore[attr-defined]
    ]
    assert orjson.loads((out / "_lake.json").read_bytes())["format"] == 2
    assert not list(out.glob("_manifest/date=*/")) and not (out / "_lock").exists()
    for f in out.rglob("*.parquet"):
        assert pq.ParquetFile(f).metadata.num_row_groups == 1
    # Idempotent: a second compact changes nothing.
    before = _snapshot(out)
    code, stdout, err = await cli("compact", "--out", str(out), "--json")
    assert code == 0 and orjson.loads(stdout)["already_compact"] is True, err
    assert _snapshot(out) == before
    # A harvest of the same days finds every shard committed: no shard is fetched again.
    requests = dict(sim.shard_requests)  # type: ignore[attr-defined]
    code, stdout, err = await cli(*sim_args(sim, out, "--json"), env=sim_env(sim))
    assert code == 0, err
    assert orjson.loads(stdout)["shards"]["skipped"] == 12
    assert dict(sim.shard_requests) == requests  # type: ignore[attr-defined]


async def test_a_lake_compact_cannot_convert_is_left_as_it_is(start_sim, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    await _old_lake(start_sim, out)
    (out / "_lock").write_bytes(
        orjson.dumps({"pid": os.getpid(), "host": os.uname().nodename, "since": "now"})
    )
    before = _snapshot(out)
    code, _, err = await cli("compact", "--out", str(out))
    assert code == 4 and "locked" in err and "Traceback" not in err
    assert _snapshot(out) == before and not (tmp_path / ".lake.compacting").exists()
    (out / "_lock").unlink()
    ident = orjson.loads((out / "_lake.json").read_bytes())
    (out / "_lake.json").write_bytes(orjson.dumps({**ident, "format": 7}))
    before = _snapshot(out)
    code, _, err = await cli("compact", "--out", str(out))
    assert code == 2 and "format '7'" in err and err.count("\n") == 1
    assert _snapshot(out) == before
    code, _, err = await cli("compact", "--out", str(tmp_path / "nothing-here"))
    assert code == 2 and "not a lake" in err and not (tmp_path / "nothing-here").exists()


# Per day: its file built (a rename), its document (a rename), the swap; then the next day.
@pytest.mark.parametrize(
    "point", ["before-rename:2", "after-rename:1", "after-rename:2", "after-swap:1", "after-rename:4"]
)
async def test_compact_killed_anywhere_finishes_when_run_again(start_sim, tmp_path: Path, point: str) -> None:
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out)
    code, _, _ = await cli("compact", "--out", str(out), env={"VOBIZ_HARVEST_CRASH": point})
    assert code == -signal.SIGKILL
    # Killed anywhere, a reader counts every committed record once: none lost, none twice.
    total = len(all_records(sim))
    assert _read(out) == (total, total)
    code, _, err = await cli("compact", "--out", str(out))
    assert code == 0, err
    assert_lake_equals(out, all_records(sim))
    assert len(list(out.rglob("*.parquet"))) == 3 and not list(out.rglob("cdr-*"))


async def test_a_reader_polling_during_compact_never_counts_a_record_twice_or_misses_one(
    start_sim, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out, days=20)
    total = len(all_records(sim))
    with Poller(out) as poller:
        code, stdout, err = await cli("compact", "--out", str(out), "--json")
    assert code == 0, err
    assert poller.seen, "the reader never read the lake"
    assert set(poller.seen) == {(total, total)}
    assert orjson.loads(stdout)["days_swapped_in_one_step"] == 20
    assert_lake_equals(out, all_records(sim))


async def test_where_days_cannot_be_swapped_compact_says_a_reader_could_count_one_twice(
    start_sim, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out)
    (tmp_path / ".lake.compacting").write_text("not compact's")  # its working directory cannot be made
    code, stdout, err = await cli("compact", "--out", str(out), "--json")
    assert code == 0, err
    facts = orjson.loads(stdout)
    assert facts["days_swapped_in_one_step"] == 0 and ".lake.compacting cannot be used" in facts["not_atomic"]
    assert "could count it twice" in err and err.count("\n") == 1
    assert_lake_equals(out, all_records(sim))
    assert (tmp_path / ".lake.compacting").read_text() == "not compact's"


async def test_a_planted_link_beside_the_lake_is_not_followed(start_sim, tmp_path: Path) -> None:
    """Whoever can write beside the lake cannot have ``compact`` delete files elsewhere
    through a link named like its working directory."""
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out)
    elsewhere = tmp_path / "elsewhere" / "date=2020-01-01"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep.parquet").write_text("someone's")
    (tmp_path / ".lake.compacting").symlink_to(tmp_path / "elsewhere")
    code, stdout, err = await cli("compact", "--out", str(out), "--json")
    assert code == 0, err
    assert "is not compact's working directory" in orjson.loads(stdout)["not_atomic"]
    assert (elsewhere / "keep.parquet").read_text() == "someone's"
    assert_lake_equals(out, all_records(sim))


async def test_compact_of_the_current_directory_works_beside_it(start_sim, tmp_path: Path) -> None:
    """``--out .``: the working directory is made beside the lake, not inside it, where a
    reader would count a swapped day's old files again."""
    out = tmp_path / "lake"
    sim = await _old_lake(start_sim, out)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOBIZ_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harvester", "compact", "--out", ".",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=out,
        env={**env, "VOBIZ_HARVEST_CRASH": "after-swap:1"},
    )  # fmt: skip
    await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL  # a day swapped, its old files not yet deleted
    total = len(all_records(sim))
    assert _read(out) == (total, total)
    assert (tmp_path / ".lake.compacting").is_dir()
    code, _, err = await cli("compact", "--out", str(out))
    assert code == 0, err
    assert_lake_equals(out, all_records(sim))
    assert not (tmp_path / ".lake.compacting").exists()
