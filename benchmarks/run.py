"""Throughput benchmarks: the harvester against the naive loop, on the simulator.

    python -m benchmarks                      # loopback, latency, limit scenarios
    python -m benchmarks --scenario memory    # 1M records, peak memory
    python -m benchmarks --scenario bigshard  # two shards of 327k records, streamed to their files
    python -m benchmarks --scenario workers   # loopback with 0, 1 and 2 decode workers
    python -m benchmarks --scenario loopback --runs 5
    python -m benchmarks --scenario partner   # 2,000 small customers × 30 days (benchmarks.partner)
    python -m benchmarks --scenario nightly   # their yesterday at 20 requests a second

The simulator runs in its own process (its CPU is measured separately, to show it is not
the bottleneck). Each client runs as a subprocess so its CPU seconds come from the kernel
(``wait4``, and ``/proc`` for the processes it does not reap: see :class:`TreeCpu`). Its
peak memory is the largest sum of proportional set sizes over its process tree, sampled
every 0.1 s: one measure whether a client runs alone or with decode workers (before
2026-12-06 a lone process reported its own RSS high-water mark, which counts libraries it
shares with the simulator in full, and the CPU of a fork server was missed). Clients
alternate, the median of ``--runs`` is reported, and every result is checked against the
simulator's own records: a fast wrong answer fails the run.
Results go to ``benchmarks/results/<scenario>.json`` and ``benchmarks/results/latest.md``.

``loopback`` also runs ``floor`` (:mod:`benchmarks.floor`): the harvester's own HTTP, decode
and Parquet path with none of its bookkeeping, the CPU per record this machine charges for
those parts alone.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as dt
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from harvester.sim import Dataset

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
END = dt.date(2026, 3, 7)  # fixed days: results do not depend on today
TOKEN = "sim-partner-token"


@dataclass
class Scenario:
    name: str
    customers: int
    days: int
    calls: int
    clients: list[str]
    latency_ms: float = 0
    rate_limit: float | None = None
    runs: int = 3
    sim_extra: list[str] = field(default_factory=list)
    volumes: str = "even"  # the simulator's --volumes: even, or lognormal (a partner's long tail)


SCENARIOS = {
    "loopback": Scenario("loopback", 20, 7, 950, ["harvester", "naive", "floor"]),
    "latency": Scenario("latency", 5, 7, 950, ["harvester", "naive"], latency_ms=50),
    "limit": Scenario("limit", 4, 15, 1000, ["harvester@20", "harvester@auto"], rate_limit=20, runs=1),
    # A partner's nightly against a real API's limit: yesterday of 2,000 small customers
    # (lognormal, 8 calls a day on the median customer's scale) at 20 requests a second.
    "nightly": Scenario(
        "nightly",
        2000,
        1,
        8,
        ["harvester@20", "harvester@auto"],
        rate_limit=20,
        volumes="lognormal",
    ),
    "memory": Scenario(
        "memory",
        40,
        25,
        1000,
        ["harvester"],
        runs=1,
        sim_extra=["--cache-records", "1200000", "--page-cache-mb", "2048"],
    ),
    # The same shape with less memory: days of the feed past 10,000 records streamed.
    "memory-bounded": Scenario(
        "memory-bounded",
        40,
        25,
        1000,
        ["harvester", "harvester[stream-rows=10000]"],
        runs=2,
        sim_extra=["--cache-records", "1200000", "--page-cache-mb", "2048"],
    ),
    "bigshard": Scenario(
        "bigshard",
        2,
        1,
        300_000,
        ["harvester"],
        runs=1,
        sim_extra=["--cache-records", "700000", "--page-cache-mb", "2048"],
    ),
    "progress": Scenario("progress", 20, 7, 950, ["harvester", "harvester+progress"], runs=5),
    "workers": Scenario("workers", 20, 7, 950, ["harvester/w0", "harvester/w1", "harvester/w2"], runs=5),
    "s3": Scenario("s3", 20, 7, 950, ["harvester", "harvester>s3", "harvester/w0>s3"], runs=3),
    # harvester*N: N processes at once, --partition i/N, into one lake (one machine: 2 cores)
    "partitions": Scenario("partitions", 20, 7, 950, ["harvester*1", "harvester*2", "harvester*4"], runs=1),
    # The same against a limit of 20/s, every worker asking for 18/s of one shared budget in
    # Redis (--rate-store; started by the benchmark, needs redis-server).
    "partitions-limit": Scenario(
        "partitions-limit",
        4,
        10,
        1000,
        ["harvester@18*1", "harvester@18*2", "harvester@18*4"],
        rate_limit=20,
        runs=1,
    ),
    # The same with --rate auto shared in Redis: one learned limit, from nothing, for all.
    "partitions-auto": Scenario(
        "partitions-auto",
        4,
        10,
        1000,
        ["harvester@auto*1", "harvester@auto*2", "harvester@auto*4"],
        rate_limit=20,
        runs=1,
    ),
}


def _proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name, the state first."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user+system) a live process has used so far."""
    parts = _proc_stat(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


def _proc_kb(pid: int, name: str, key: str) -> int:
    """A ``key: N kB`` line of ``/proc/<pid>/<name>`` (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (decode workers may be grandchildren, under a fork server)."""
    found, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _tree_pss_kb(pid: int) -> int:
    """Memory of a client and its decode workers now: the sum of their proportional set sizes
    (pages shared since the fork counted once, split between the sharers)."""
    return sum(_proc_kb(p, "smaps_rollup", "Pss:") for p in [pid, *_descendants(pid)])


class TreeCpu:
    """CPU of the processes below a client that ``wait4`` on the client does not count: its
    decode workers (grandchildren, reaped by their fork server) and those of its children it
    never reaps (the fork server and the resource tracker outlive it: Python does not wait
    for them at exit). A child that leaves while the client runs was reaped by it, so it is
    in ``wait4``'s count and not here. Each process's own CPU (not its children's) is read
    every sample and its last reading counts, so at most one sampling interval of each is
    missed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: dict[int, float] = {}
        self.children: set[int] = set()  # the client's children at the last sample it ran
        self.reaped: set[int] = set()

    def sample(self) -> None:
        if _running(self.pid):
            now = set(_children(self.pid))
            self.reaped |= self.children - now
            self.children = now
        for p in [*self.children, *(d for child in self.children for d in _descendants(child))]:
            with contextlib.suppress(OSError, IndexError):
                self.last[p] = _proc_cpu(p)

    def total(self) -> float:
        return sum(cpu for p, cpu in self.last.items() if p not in self.reaped)


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has)."""
    try:
        return _proc_stat(pid)[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Sim:
    """The simulator in its own process."""

    def __init__(self, sc: Scenario) -> None:
        args = [
            sys.executable,
            "-m",
            "harvester",
            "sim",
            "--port",
            "0",
            "--customers",
            str(sc.customers),
            "--days",
            str(sc.days),
            "--calls-per-day",
            str(sc.calls),
            "--end-date",
            END.isoformat(),
            "--latency-ms",
            str(sc.latency_ms),
            "--volumes",
            sc.volumes,
            *sc.sim_extra,
        ]
        if sc.rate_limit:
            args += ["--rate-limit", str(sc.rate_limit)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"http://[0-9.]+:[0-9]+", line)
        if not match:
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = match.group(0)

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class S3:
    """A local S3 server (moto) for the object-store scenarios, in this process's threads; it
    counts the requests it answers (``calls``), as a bill would."""

    def __init__(self) -> None:
        import boto3
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
        self.calls = 0
        moto = DomainDispatcherApplication(create_backend_app)

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self.calls += 1
            return moto(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counted, True, request_handler=MotoRequestHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
        self.client.create_bucket(Bucket="bench")

    def upload(self, lake: Path, prefix: str) -> None:
        """Every file of the local lake ``lake`` to ``s3://bench/<prefix>/``."""
        for f in sorted(p for p in lake.rglob("*") if p.is_file()):
            self.client.upload_file(str(f), "bench", f"{prefix}/{f.relative_to(lake).as_posix()}")

    def stop(self) -> None:
        self.server.shutdown()


def _partitioned(kind: str, parts: int, sim: Sim, sc: Scenario, out: Path) -> dict[str, Any]:
    """``parts`` harvester processes at once, one part each, into one lake; their records,
    requests and CPU summed, their elapsed time the longest (a shared Redis when limited)."""
    redis = (
        subprocess.Popen(
            ["redis-server", "--port", "16379", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        if sc.rate_limit
        else None
    )
    try:
        time.sleep(0.3 if redis else 0)
        base = kind.split("*", 1)[0]
        extra = ["--rate-store", "redis://127.0.0.1:16379/0"] if redis else []
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [*_harvester_cmd(base, sim, sc, out), "--partition", f"{i}/{parts}", *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env={**os.environ, "VOBIZ_AUTH_ID": "PA_SIMULATOR", "VOBIZ_AUTH_TOKEN": TOKEN},
            )
            for i in range(parts)
        ]
        reps = []
        for proc in procs:
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"{kind} exited {proc.returncode}: {stderr.decode()[-2000:]}")
            reps.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the N harvesters, reaped just now
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime  # (not their decode workers)
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait()
    records = sum(r["records"] for r in reps)
    requests = sum(r["requests"] for r in reps)
    elapsed = max(r["elapsed_s"] for r in reps)
    return {
        "client": kind,
        "records": records,
        "pages": sum(r["pages"] for r in reps),
        "elapsed_s": elapsed,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_memory_mb": 0,
        "requests": requests,
        "throttled": sum(r["throttled"] for r in reps),
        "rate": reps[0]["rate"],
        "sim_cpu_s": 0,
        "records_per_s": round(records / elapsed, 1),
        "pages_per_s": round(sum(r["pages"] for r in reps) / elapsed, 2),
        "requests_per_s": round(requests / elapsed, 2),
        "cpu_s_per_m_records": round(cpu / max(1, records) * 1e6, 2),
    }


def _harvester_cmd(kind: str, sim: Sim, sc: Scenario, out: Path) -> list[str]:
    rate = kind.split("@", 1)[1] if "@" in kind else "unlimited"
    return [
        sys.executable,
        "-m",
        "harvester",
        "harvest",
        "--base-url",
        sim.url,
        "--start-date",
        (END - dt.timedelta(days=sc.days - 1)).isoformat(),
        "--end-date",
        END.isoformat(),
        "--out",
        str(out),
        "--rate",
        rate,
        "--json",
        "--quiet",
        "--concurrency",
        "32" if sc.latency_ms else "16",
    ]


def _client(kind: str, sim: Sim, sc: Scenario, out: Path, s3: S3 | None = None) -> dict[str, Any]:
    parts = re.search(r"\*(\d+)$", kind)
    if parts:
        return _partitioned(kind, int(parts.group(1)), sim, sc, out)
    start = (END - dt.timedelta(days=sc.days - 1)).isoformat()
    if kind in ("naive", "floor"):
        cmd = [
            sys.executable,
            "-m",
            f"benchmarks.{kind}",
            sim.url,
            "PA_SIMULATOR",
            TOKEN,
            start,
            END.isoformat(),
            str(out),
        ]
    else:
        cmd = _harvester_cmd(kind, sim, sc, out)
        if "+progress" in kind:
            cmd.append("--progress")
        workers = re.search(r"/w(\d+)", kind)  # harvester/wN: N decode workers
        if workers:
            cmd += ["--decode-workers", workers.group(1)]
        if ">s3" in kind and s3 is not None:
            cmd += ["--out", f"s3://bench/{out.name}", "--s3-endpoint-url", s3.url]
        for flag, value in re.findall(r"\[([a-z-]+)=([A-Za-z0-9-]+)\]", kind):  # harvester[fetch=global]
            cmd += [f"--{flag}", value]
    env = {"VOBIZ_AUTH_ID": "PA_SIMULATOR", "VOBIZ_AUTH_TOKEN": TOKEN}
    sim_cpu0 = sim.cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, **env}
    )
    # Peak memory: the largest sampled sum of PSS over the client's process tree.
    peak_kb, tick = 0, 0
    tree = TreeCpu(proc.pid)
    while True:
        tree.sample()
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if tick % 5 == 0:  # every 0.1 s: smaps_rollup is not free
            peak_kb = max(peak_kb, _tree_pss_kb(proc.pid))
        tick += 1
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    tree.sample()  # the children the client left running (a fork server) once more
    stdout = proc.stdout.read() if proc.stdout else b""
    stderr = proc.stderr.read() if proc.stderr else b""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{kind} exited {code}: {stderr.decode()[-3000:]}")
    rep = json.loads(stdout.decode().strip().splitlines()[-1])
    # wait4 counts the client and the children it reaped; the rest of its tree is sampled.
    cpu = ru.ru_utime + ru.ru_stime + tree.total()
    res = {
        "client": kind,
        "records": rep["records"],
        "pages": rep["pages"],
        "elapsed_s": rep["elapsed_s"],
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_memory_mb": round(peak_kb / 1024, 1),
        "requests": rep.get("requests", rep["pages"] + 1),
        "throttled": rep.get("throttled", 0),
        "rate": rep.get("rate", "sequential"),
        "sim_cpu_s": round(sim.cpu() - sim_cpu0, 3),
    }
    res["records_per_s"] = round(res["records"] / res["elapsed_s"], 1)
    res["pages_per_s"] = round(res["pages"] / res["elapsed_s"], 2)
    res["requests_per_s"] = round(res["requests"] / res["elapsed_s"], 2)
    res["cpu_s_per_m_records"] = round(cpu / max(1, res["records"]) * 1e6, 2)
    return res


def _check(out: Path, expected: set[str], s3: S3 | None = None) -> None:
    """The result must equal the simulator's records: same uuids, no duplicates."""
    if s3 is not None:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=s3.url.split("://")[1], scheme="http", region="us-east-1")
        infos = fs.get_file_info(pafs.FileSelector(f"bench/{out.name}", recursive=True))
        files = [i.path for i in infos if i.path.endswith(".parquet")]
        table = ds.dataset(files, format="parquet", filesystem=fs).to_table(columns=["uuid"])
    else:
        files = [str(p) for p in out.rglob("*.parquet")]
        table = ds.dataset(files, format="parquet").to_table(columns=["uuid"])
    uuids = table.column("uuid").to_pylist()
    if len(uuids) != len(set(uuids)) or set(uuids) != expected:
        raise SystemExit(
            f"WRONG RESULT in {out}: {len(uuids)} rows, {len(set(uuids))} distinct, expected {len(expected)}"
        )


def _expected_uuids(sc: Scenario) -> set[str]:
    """The simulator's uuids, generated shard by shard (the records themselves are not kept)."""
    data = Dataset(
        seed=7,
        customers=sc.customers,
        days=sc.days,
        calls_per_day=sc.calls,
        end_date=END,
        cache_records=0,
        volumes=sc.volumes,
    )
    return {
        r["uuid"] for c in data.customer_list for day in data.day_list for r in data.shard(c.auth_id, day)
    }


def run_scenario(sc: Scenario, runs: int | None, work: Path) -> dict[str, Any]:
    """Run every client of ``sc``; each run's lake is left in ``work`` (see :func:`main`)."""
    runs = runs or sc.runs
    expected = _expected_uuids(sc)
    print(
        f"[{sc.name}] {sc.customers} customers × {sc.days} days, {len(expected):,} records", file=sys.stderr
    )
    sim = Sim(sc)
    s3 = S3() if any(">s3" in k for k in sc.clients) else None
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in sc.clients}
    tmp = work / sc.name
    tmp.mkdir()
    try:
        # The simulator renders and caches its pages: warm it with each way of reading days.
        first = next(k for k in sc.clients if k.startswith("harvester"))
        readers = [k for k in sc.clients if "[fetch=" in k]
        for n, warm_kind in enumerate(dict.fromkeys(re.split(r"[>+/*]", k)[0] for k in [first, *readers])):
            _client(warm_kind, sim, sc, tmp / f"warm-{n}")
        for i in range(runs):
            for kind in sc.clients if i % 2 == 0 else list(reversed(sc.clients)):
                out = tmp / f"{re.sub(r'[^A-Za-z0-9_-]', '-', kind)}-{i}"
                res = _client(kind, sim, sc, out, s3)
                _check(out, expected, s3 if ">s3" in kind else None)
                results[kind].append(res)
                print(
                    f"  {kind:<20} run {i + 1}: {res['records_per_s']:>10,.0f} rec/s, "
                    f"cpu {res['cpu_s']:.2f}s, peak memory {res['peak_memory_mb']} MB",
                    file=sys.stderr,
                )
    finally:
        sim.stop()
        if s3 is not None:
            s3.stop()
    summary = {k: _median(v) for k, v in results.items()}
    base = summary.get("naive")
    for row in summary.values():
        row["vs_naive"] = round(row["records_per_s"] / base["records_per_s"], 2) if base else None
        row["limit_share"] = round(row["requests_per_s"] / sc.rate_limit, 3) if sc.rate_limit else None
        row["sim_cpu_share"] = round(row["sim_cpu_s"] / max(1e-9, row["cpu_s"]), 3)
    return {
        "scenario": sc.name,
        "records": len(expected),
        "latency_ms": sc.latency_ms,
        "rate_limit": sc.rate_limit,
        "runs": runs,
        "clients": summary,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, (int, float)):
            med = statistics.median(r[key] for r in rows)
            out[key] = round(med) if isinstance(value, int) else med  # counts stay counts
    return out


COLUMNS = [
    ("client", "client"),
    ("records_per_s", "records/s"),
    ("pages_per_s", "pages/s"),
    ("requests_per_s", "req/s"),
    ("limit_share", "share of limit"),
    ("throttled", "429s"),
    ("cpu_s_per_m_records", "CPU s / M records"),
    ("peak_memory_mb", "peak memory MB"),
    ("vs_naive", "× naive"),
    ("sim_cpu_share", "sim CPU / client CPU"),
]


PERCENT = {"limit_share", "sim_cpu_share"}


def _cell(v: Any, key: str = "") -> str:
    if v is None:
        return "–"
    if key in PERCENT:
        return f"{v * 100:.1f}%"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(result: dict[str, Any]) -> str:
    if "clients" not in result:  # a scenario of its own shape (partner): one fact a row
        rows = [f"| {k} | {_cell(v)} |" for k, v in result.items() if k != "scenario"]
        return "\n".join([f"**{result['scenario']}**", "", "| fact | value |", "|---|---|", *rows])
    head = (
        f"**{result['scenario']}**: {result['records']:,} records, latency {result['latency_ms']} ms, "
        f"limit {result['rate_limit'] or 'none'}, median of {result['runs']}"
    )
    lines = [head, "", "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in result["clients"].values():
        cells = []
        for key, _ in COLUMNS:
            v = row.get(key, row.get("peak_rss_mb") if key == "peak_memory_mb" else None)  # older results
            cells.append(_cell(v, key))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_latest() -> None:
    """``results/latest.md``: the newest result of every scenario, one table each."""
    tables = [table(json.loads(p.read_text())) for p in sorted(RESULTS.glob("*.json"))]
    (RESULTS / "latest.md").write_text("\n\n".join(tables) + "\n")


def main(
    argv: list[str] | None = None, more: dict[str, Callable[[Path], dict[str, Any]]] | None = None
) -> int:
    """Run the scenarios asked; ``more`` adds scenarios of their own shape (name → run(work))."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted([*SCENARIOS, *(more or {})]),
        help="repeatable; default loopback, latency, limit",
    )
    p.add_argument("--runs", type=int, default=None, help="runs per client (median reported)")
    p.add_argument("--render", action="store_true", help="only rewrite results/latest.md from results/*.json")
    args = p.parse_args(argv)
    if args.render:
        render_latest()
        return 0
    names = args.scenario or ["loopback", "latency", "limit"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Bytecode as pip leaves it after an install: a source checkout run with
    # PYTHONDONTWRITEBYTECODE would otherwise compile the package in every measured run.
    compileall.compile_dir(ROOT / "harvester", quiet=1)
    tables = []
    # Every run's lake is kept until the benchmark ends. On ext4 without a journal (this
    # machine's disk) a new file's inode is chosen past every inode deleted in the last
    # 5-10 minutes, each looked up in the inode table: deleting one run's lake just before
    # the next run cost that run ≈0.2 CPU s (7% of a loopback harvest) in kernel time,
    # paid for the benchmark's own clean-up, not for the harvest.
    work = Path(tempfile.mkdtemp(prefix="vobiz-bench-"))
    try:
        for name in names:
            if name in (more or {}):
                result = (more or {})[name](work)
            else:
                result = run_scenario(SCENARIOS[name], args.runs, work)
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            tables.append(table(result))
            print(tables[-1] + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    render_latest()
    return 0
