"""``vobiz-harvest bench``: pagination throughput of one shard at rising concurrency.

For each concurrency level the same shard (one customer × one day, or the global feed × one
day) is fetched page by page within ``--rate``; the table reports pages/s, records/s, request
latency percentiles and 429s, so a user can see where an API (the real one included) stops
scaling. ``--plot FILE`` draws throughput against concurrency (needs the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from harvester.api.client import Client, RetryPolicy
from harvester.api.endpoints import SCOPES, list_params, list_path
from harvester.api.pacing import make_pacer
from harvester.cli.common import add_source, check_source, probe_account
from harvester.cli.common import token as auth_token
from harvester.config import parse_date, parse_rate
from harvester.errors import UsageError
from harvester.harvest import loop
from harvester.records.decode import decode_page


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def _level(
    args: argparse.Namespace,
    token: str,
    base_url: str,
    level: int,
    path: str,
    day: dt.date,
    pages: int,
    per_page: int,
) -> dict[str, Any]:
    client = Client(
        base_url,
        args.auth_id,
        token,
        make_pacer(parse_rate(args.rate)),
        concurrency=level,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        policy=RetryPolicy(retries=args.retries),
    )
    client.latencies = []
    records = 0

    async def one(n: int) -> None:
        nonlocal records
        page = await client.get(
            path, list_params(day, {}, n, per_page), lambda b: decode_page(b, n, per_page), f"page {n}"
        )
        records += page.rows

    async with client:
        t0 = time.perf_counter()
        queue = list(range(1, pages + 1))

        async def worker() -> None:
            while queue:
                await one(queue.pop(0))

        await asyncio.gather(*(worker() for _ in range(level)))
        elapsed = time.perf_counter() - t0
    lat = [x * 1000 for x in client.latencies]
    return {
        "concurrency": level,
        "pages": pages,
        "records": records,
        "seconds": round(elapsed, 3),
        "pages_per_s": round(pages / elapsed, 2),
        "records_per_s": round(records / elapsed, 1),
        "latency_ms_p50": round(percentile(lat, 50), 2),
        "latency_ms_p95": round(percentile(lat, 95), 2),
        "latency_ms_p99": round(percentile(lat, 99), 2),
        "latency_ms_mean": round(statistics.fmean(lat), 2) if lat else 0.0,
        "throttled": client.stats.throttled,
        "retries": client.stats.retries,
        "requests": client.stats.requests,
    }


async def run_bench(args: argparse.Namespace, token: str, base_url: str) -> dict[str, Any]:
    levels = _levels(args.levels)
    day = (
        parse_date(args.date, "--date")
        if args.date
        else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    )
    account = args.customer
    async with Client(
        base_url,
        args.auth_id,
        token,
        make_pacer(None),
        concurrency=2,
        timeout=args.timeout,
        policy=RetryPolicy(retries=args.retries),
    ) as probe_client:
        account = await probe_account(args, probe_client)
        path = list_path(args.scope, account)
        first = await probe_client.get(
            path, list_params(day, {}, 1, args.per_page), lambda b: decode_page(b, 1, args.per_page), "page 1"
        )
    pages = min(first.pages, args.max_pages)
    if pages == 0:
        raise UsageError(f"shard {day}/{account or 'global'} is empty: pick another --date or --customer")
    out = sys.stderr if args.json else sys.stdout
    print(
        f"shard {day}/{account or 'global'}: {first.total} records, {first.per_page} per page, "
        f"{pages} pages per level, rate {args.rate}",
        file=out,
    )
    print(HEAD, file=out)
    rows = []
    for level in levels:
        rows.append(await _level(args, token, base_url, level, path, day, pages, first.per_page))
        print(_row(rows[-1]), file=out, flush=True)
    return {
        "shard": f"{day}/{account or 'global'}",
        "total": first.total,
        "per_page": first.per_page,
        "rate": args.rate,
        "levels": rows,
    }


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--levels {text!r} is not a list of numbers: use e.g. 1,2,4,8,16,32") from None
    if not levels or any(n < 1 or n > 256 for n in levels):
        raise UsageError(f"--levels {text!r}: each level must be 1 to 256")
    return levels


HEAD = (
    f"{'conc':>5} {'pages':>6} {'pages/s':>9} {'records/s':>11} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'429s':>5}"
)


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['concurrency']:>5} {r['pages']:>6} {r['pages_per_s']:>9.1f} {r['records_per_s']:>11,.0f} "
        f"{r['latency_ms_p50']:>8.1f} {r['latency_ms_p95']:>8.1f} {r['latency_ms_p99']:>8.1f} "
        f"{r['throttled']:>5}"
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """A PNG of records/s and p95 latency against concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'vobiz-harvester[plot]'") from None
    levels = [r["concurrency"] for r in result["levels"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(levels, [r["records_per_s"] for r in result["levels"]], marker="o", label="records/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("records/s")
    ax2 = ax.twinx()
    ax2.plot(
        levels,
        [r["latency_ms_p95"] for r in result["levels"]],
        marker="s",
        color="tab:red",
        label="p95 latency ms",
    )
    ax2.set_ylabel("p95 latency (ms)")
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_title(f"Pagination throughput, shard {result['shard']} (rate {result['rate']})", fontsize=10)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)


def command(args: argparse.Namespace) -> int:
    base_url = check_source(args)
    token = auth_token(args)
    if not args.auth_id or not token:
        raise UsageError("no credentials: set VOBIZ_AUTH_ID and VOBIZ_AUTH_TOKEN (or the flags)")
    if args.plot is not None and args.plot.parent and not args.plot.parent.exists():
        raise UsageError(f"--plot {args.plot}: folder {args.plot.parent} does not exist")
    _levels(args.levels)
    result = loop.run(run_bench(args, token, base_url))
    if args.json:
        print(orjson.dumps(result).decode())
    if args.plot is not None:
        plot(result, args.plot)
    return 0


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "bench",
        help="pagination throughput of one shard at rising concurrency",
        description="Fetch the same shard at each concurrency level within --rate and "
        "report pages/s, records/s, latency p50/p95/p99 and 429s.",
    )
    b.add_argument("--date", help="the shard's day, YYYY-MM-DD (default: yesterday UTC)")
    b.add_argument("--scope", default="partner", choices=list(SCOPES))
    b.add_argument("--customer", metavar="AUTH_ID", help="partner scope: the customer (default: the first)")
    b.add_argument("--levels", default="1,2,4,8,16,32", help="concurrency levels (default %(default)s)")
    b.add_argument("--rate", default="unlimited", help="requests/s cap for every level (default unlimited)")
    b.add_argument("--per-page", type=int, default=100, choices=range(1, 101), metavar="1-100")
    b.add_argument("--max-pages", type=int, default=200, help="pages per level at most (default 200)")
    b.add_argument("--json", action="store_true", help="the result as one JSON object on stdout")
    b.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw records/s and p95 latency against concurrency (needs the plot extra)",
    )
    add_source(b)
