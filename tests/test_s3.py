"""The lake on S3: a real S3 API on loopback (moto's server, started here), storage faults
from a proxy in front of it, kill -9 and resume, unfinished uploads aborted."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from harvester.sim import SimConfig
from tests.conftest import PAST, cli, dataset, race_for_a_stale_lock, sim_args, sim_env
from tests.s3env import FaultyS3Proxy

moto_server = pytest.importorskip("moto.server", reason="moto[server] not installed")
boto3 = pytest.importorskip("boto3")
pafs = pytest.importorskip("pyarrow.fs")
pq = pytest.importorskip("pyarrow.parquet")

AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
BUCKET = "cdr-lake"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for k, v in AWS.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
async def proxy(moto: str) -> AsyncIterator[tuple[FaultyS3Proxy, str]]:
    p = FaultyS3Proxy(moto)
    url = await p.start()
    yield p, url
    await p.stop()


def _s3fs(moto: str) -> Any:
    return pafs.S3FileSystem(
        endpoint_override=moto.split("://")[1],
        scheme="http",
        region="us-east-1",
        access_key="testing",
        secret_key="testing",
    )


def _read_lake(moto: str, prefix: str) -> tuple[list[str], list[str]]:
    """(uuids of every Parquet object, every key) read straight from the S3 server."""
    fs = _s3fs(moto)
    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True))
    keys = [i.path for i in infos if i.type == pafs.FileType.File]
    uuids: list[str] = []
    for k in keys:
        if k.endswith(".parquet"):
            uuids += pq.read_table(k, filesystem=fs, columns=["uuid"]).column("uuid").to_pylist()
    return uuids, keys


def _committed(moto: str, keys: list[str]) -> set[tuple[str, str]]:
    """(day, who) of every committed shard: staged records, and the shards of day records."""
    fs = _s3fs(moto)
    found = set()
    for k in keys:
        if "/_staging/" in k and k.endswith(".json"):
            day, who = k.split("/_staging/date=")[1].removesuffix(".json").split("/")
            found.add((day, who))
        elif "/_manifest/date=" in k:
            with fs.open_input_stream(k) as f:
                doc = orjson.loads(f.read())
            found |= {(doc["date"], who) for who in doc["shards"]}
    return found


async def _harvest_s3(sim: Any, out: str, endpoint: str, *extra: str, **env: str) -> tuple[int, str, str]:
    """The CLI harvest of all of ``sim``'s days into ``out`` on the S3 server at ``endpoint``."""
    args = [*sim_args(sim, Path("unused"), *extra), "--out", out, "--s3-endpoint-url", endpoint]
    return await cli(*args, env=sim_env(sim, **AWS, **env))


def _expected(sim: Any) -> set[str]:
    ids = [c.auth_id for c in sim.data.customer_list]
    return {r["uuid"] for r in sim.data.records(ids, sim.data.day_list)}


async def test_harvest_to_s3_through_storage_faults(start_sim, s3, moto, proxy, tmp_path: Path) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=300, end_date=PAST)))
    faulty, url = proxy
    faulty.rate = 0.15
    out = f"s3://{BUCKET}/faults"
    code, stdout, err = await _harvest_s3(sim, out, url, "--json")
    assert code == 0, err
    rep = orjson.loads(stdout)
    assert rep["shards"]["verified"] == 6 and rep["lake"] == out
    assert faulty.stats["slowdown"] >= 1 and faulty.stats["reset"] >= 1, faulty.stats
    uuids, keys = _read_lake(moto, "faults")
    assert len(uuids) == len(set(uuids)) and set(uuids) == _expected(sim)
    names = {k.split("/", 2)[2] for k in keys}
    assert "_lake.json" in names and "_lock" not in names
    assert sum(1 for n in names if n.startswith("_manifest/")) == 2  # one record per day
    assert sum(1 for n in names if n.endswith(".parquet")) == 2  # one file per day
    assert all(n.startswith(("_lake.json", "_manifest/", "date=")) for n in names)
    assert not [n for n in names if n.rsplit("/", 1)[-1].startswith(".")]
    # DuckDB-style readers: pyarrow's dataset over the prefix with hive partitioning
    import pyarrow.dataset as pads

    ds = pads.dataset(
        f"{BUCKET}/faults",
        filesystem=_s3fs(moto),
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=False,
        ignore_prefixes=["_", "."],
    )
    assert ds.count_rows() == len(uuids) and "date" in ds.schema.names
    secrets = [sim.config.auth_token, AWS["AWS_SECRET_ACCESS_KEY"] + "x"]
    assert not any(s in stdout + err for s in secrets)


@pytest.mark.parametrize("point", ["after-commit:2", "before-upload-complete:3"])
async def test_kill9_then_resume_on_s3(start_sim, s3, moto, proxy, point: str) -> None:
    # 12 shards, 6 open at a time (concurrency 2 + 4): a kill after the 2nd commit leaves some
    # uncommitted however the commits of the open shards interleave.
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=4, calls_per_day=250, end_date=PAST)))
    _, url = proxy
    prefix = f"kill-{point.split(':')[0]}"
    out = f"s3://{BUCKET}/{prefix}"
    args = [*sim_args(sim, Path("unused"), "--concurrency", "2"), "--out", out, "--s3-endpoint-url", url]
    code, _, _ = await cli(*args, env=sim_env(sim, VOBIZ_HARVEST_CRASH=point, **AWS))
    assert code == -signal.SIGKILL
    uuids, keys = _read_lake(moto, prefix)
    committed = _committed(moto, keys)
    assert len(committed) < 12
    # Objects of shards whose manifest record was not written yet may exist, but only whole:
    # _read_lake read every one of them as Parquet. The re-run replaces them (same names).
    assert len(uuids) == len(set(uuids))
    # A dead run's unfinished multipart upload (simulated) must be aborted by the next run.
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}/date={PAST}/cdr-orphan.parquet")
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads")
    before = dict(sim.shard_requests)
    code, _, err = await cli(*args, env=sim_env(sim, **AWS))
    assert code == 0, err
    uuids, keys = _read_lake(moto, prefix)
    assert len(uuids) == len(set(uuids)) and set(uuids) == _expected(sim)
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads"), up["UploadId"]
    for day, who in committed:  # committed shards were not fetched again
        assert sim.shard_requests[(who, day)] == before.get((who, day), 0)


@pytest.mark.parametrize("extra", [(), ("--stream-rows", "100")], ids=["held", "streamed"])
async def test_storage_failure_fails_the_shard_not_the_run(start_sim, s3, moto, proxy, extra) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=1, calls_per_day=150, end_date=PAST)))
    faulty, url = proxy
    broken = sim.data.customer_list[0].auth_id
    faulty.fail_puts_matching = f"{broken}.staged"
    out = f"s3://{BUCKET}/broken-{len(extra)}"
    code, stdout, err = await _harvest_s3(sim, out, url, "--json", *extra)
    assert code == 1, err
    rep = orjson.loads(stdout)
    assert rep["shards"]["failed"] == 1 and rep["shards"]["verified"] == 2
    assert broken in rep["failed"][0]["shard"] and "s3://" in rep["failed"][0]["detail"]
    _, keys = _read_lake(moto, f"broken-{len(extra)}")
    assert not [k for k in keys if broken in k]  # neither a file nor a manifest record
    faulty.fail_puts_matching = None
    code, stdout, err = await _harvest_s3(sim, out, url, "--json", *extra)
    assert code == 0 and orjson.loads(stdout)["shards"]["skipped"] == 2
    uuids, _ = _read_lake(moto, f"broken-{len(extra)}")
    assert len(uuids) == len(set(uuids)) and set(uuids) == _expected(sim)


async def test_a_feed_day_becomes_its_day_file_by_a_copy_after_reading_its_footer_alone(
    start_sim, s3, moto, proxy
) -> None:
    """A day of the feed is one staged object, labelled as one block: the fold reads its
    footer (ranged GETs) to check the label, then copies it into place on the server. The
    rows never come down (a day of a large partner is hundreds of MB)."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=3, days=2, calls_per_day=4000, end_date=PAST)))
    faulty, url = proxy
    code, stdout, err = await _harvest_s3(sim, f"s3://{BUCKET}/footers", url, "--json", "--fetch", "global")
    assert code == 0 and orjson.loads(stdout)["fetch"] == "global", err
    uuids, _ = _read_lake(moto, "footers")
    assert len(uuids) == len(set(uuids)) and set(uuids) == _expected(sim)
    sizes = {
        i.path.split("/date=")[1].split("/")[0]: i.size
        for i in _s3fs(moto).get_file_info(pafs.FileSelector(f"{BUCKET}/footers", recursive=True))
        if i.path.endswith("/cdr.parquet")
    }
    staged = {p: n for p, n in faulty.served.items() if "/_staging/" in p and p.endswith(".staged")}
    # 3 customers × 4,000 ± 40% calls: at least 7,200 rows, over 500 KB whatever the day
    assert len(sizes) == 2 and min(sizes.values()) > 500_000 and len(staged) == 2, (sizes, staged)
    for path, read in staged.items():
        size = sizes[path.split("/date=")[1].split("/")[0]]
        assert 0 < read < size / 4, (path, read, size)  # the footer; not the rows


async def test_missing_bucket_is_a_usage_error(start_sim, s3, moto) -> None:
    sim = await start_sim(SimConfig(dataset=dataset(customers=1, days=1, end_date=PAST)))
    code, _, err = await cli(
        *sim_args(sim, Path("unused")),
        "--out",
        "s3://no-such-bucket/x",
        "--s3-endpoint-url",
        moto,
        env=sim_env(sim, **AWS),
    )
    assert code == 2 and "no-such-bucket" in err and "Traceback" not in err


async def test_three_workers_into_one_s3_lake(start_sim, s3, moto) -> None:
    """Three --partition workers started at once into one object-store prefix: the lake is
    exact, each part held its own lock, and none is left behind."""
    sim = await start_sim(SimConfig(dataset=dataset(customers=4, days=2, calls_per_day=200, end_date=PAST)))
    out = f"s3://{BUCKET}/parts"
    runs = [
        _harvest_s3(sim, out, moto, "--partition", f"{i}/3", "--json", "--quiet", "--decode-workers", "0")
        for i in range(3)
    ]
    results = await asyncio.gather(*runs)
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-300:] for _, _, err in results]
    assert sum(orjson.loads(out)["shards"]["planned"] for _, out, _ in results) == 8
    uuids, keys = _read_lake(moto, "parts")
    assert len(uuids) == len(set(uuids)) and set(uuids) == _expected(sim)
    assert not [k for k in keys if "_lock" in k]


def test_of_two_takers_racing_for_a_lock_on_s3_only_one_creates_it(s3, moto) -> None:
    """Both read the lock as absent; the second's create is a conditional PUT that S3
    refuses, so only the first holds it (read, then write, would have let both)."""
    from harvester.lake.lock import LakeLock, LockHeld
    from harvester.lake.objects import ObjectStore

    first = ObjectStore(f"s3://{BUCKET}/race", endpoint_url=moto, region="us-east-1")
    second = ObjectStore(f"s3://{BUCKET}/race", endpoint_url=moto, region="us-east-1")
    read = second.read
    stale = iter([None])  # the second taker read before the first wrote
    second.read = lambda key: next(stale, None) if key == "_lock" and stale else read(key)  # type: ignore[method-assign]
    assert first.create_exclusive("_lock", b'{"token": "first"}') is True
    assert second.create_exclusive("_lock", b'{"token": "second"}') is False
    assert orjson.loads(read("_lock")) == {"token": "first"}
    # The lock built on it: while one run holds the lake, another cannot take it.
    first.delete("_lock")
    held = LakeLock(first)
    held.acquire()
    with pytest.raises(LockHeld):
        LakeLock(second).acquire()
    held.release()


def test_of_two_takers_that_found_one_stale_lock_on_s3_only_one_takes_it_over(s3, moto) -> None:
    """The takeover is a PUT conditional on the stale lock's ETag: the late taker's is
    refused once the first has replaced it (a delete, then a create, let both hold it)."""
    from harvester.lake.objects import ObjectStore

    def store() -> ObjectStore:
        return ObjectStore(f"s3://{BUCKET}/stale", endpoint_url=moto, region="us-east-1")

    race_for_a_stale_lock(store(), store())
