"""``vobiz-harvest sim``: serve the Vobiz API simulator on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
from typing import Any

from harvester.cli.common import utc_today
from harvester.config import check_range, parse_date
from harvester.errors import UsageError, clean
from harvester.harvest import loop
from harvester.sim import Dataset, SimConfig, Simulator


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="serve the Vobiz API simulator",
        description="Serve a simulated Vobiz CDR API on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    _add_sim_data(p)


def _add_sim_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated data and behaviour")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--customers", type=int, default=5)
    g.add_argument("--days", type=int, default=7)
    g.add_argument(
        "--calls-per-day",
        type=int,
        default=500,
        help="mean calls per customer and day (varies ±40%%)",
    )
    g.add_argument(
        "--volumes",
        default="even",
        choices=["even", "lognormal"],
        help="calls per customer-day: even (±40%% of --calls-per-day) or lognormal (a partner's "
        "long tail: most customers a handful, a few many)",
    )
    g.add_argument("--end-date", default=None, help="last simulated day (default: yesterday UTC)")
    g.add_argument("--rate-limit", type=float, default=None, help="requests/s per credential (429 beyond)")
    g.add_argument("--burst", type=int, default=None, help="token-bucket size of the rate limit")
    g.add_argument("--latency-ms", type=float, default=0.0)
    g.add_argument("--max-per-page", type=int, default=100, help="grant at most this many per page")
    g.add_argument("--fault-rate", type=float, default=0.0, help="share of requests that fail")
    g.add_argument("--fault-seed", type=int, default=1)
    g.add_argument(
        "--drift",
        type=float,
        default=0.0,
        metavar="CALLS_PER_S",
        help="new calls per second arriving on the current UTC day",
    )
    g.add_argument("--cache-records", type=int, default=400_000, help="generated records kept in memory")
    g.add_argument("--page-cache-mb", type=int, default=256, help="rendered pages kept in memory")
    g.add_argument("--partner-id", default="PA_SIMULATOR")
    g.add_argument("--partner-token", default="sim-partner-token")


def _sim_config(args: argparse.Namespace) -> Any:

    end = parse_date(args.end_date, "--end-date") if args.end_date else utc_today() - dt.timedelta(days=1)
    check_range("--port", args.port, 0, 65535, "use 1 to 65535, or 0 for any free port")
    check_range("--customers", args.customers, 1, 1_000_000, "use 1 or more customers")
    check_range("--days", args.days, 1, 3660, "use 1 to 3660 days")
    check_range("--calls-per-day", args.calls_per_day, 0, 10_000_000, "use 0 or more calls")
    check_range("--max-per-page", args.max_per_page, 1, 1000, "use 1 to 1000")
    check_range("--fault-rate", args.fault_rate, 0, 1, "use a share between 0 and 1")
    check_range("--latency-ms", args.latency_ms, 0, 600_000, "use 0 or more milliseconds")
    check_range("--drift", args.drift, 0, 100_000, "use 0 or more calls per second")
    if args.rate_limit is not None:
        check_range("--rate-limit", args.rate_limit, 0.01, 1_000_000, "use more than 0 requests/s")
    if args.burst is not None:
        check_range("--burst", args.burst, 1, 1_000_000, "use 1 or more requests")
    data = Dataset(
        seed=args.seed,
        customers=args.customers,
        days=args.days,
        calls_per_day=args.calls_per_day,
        end_date=end,
        cache_records=args.cache_records,
        volumes=args.volumes,
    )
    return SimConfig(
        dataset=data,
        auth_id=args.partner_id,
        auth_token=args.partner_token,
        rate_limit=args.rate_limit,
        burst=args.burst,
        latency_ms=args.latency_ms,
        max_per_page=args.max_per_page,
        fault_rate=args.fault_rate,
        fault_seed=args.fault_seed,
        drift_per_second=args.drift,
        page_cache_mb=args.page_cache_mb,
    )


def command(args: argparse.Namespace) -> int:

    config = _sim_config(args)

    async def serve() -> None:
        sim = Simulator(config)
        try:
            url = await sim.start(args.host, args.port)
        except OSError as e:
            raise UsageError(
                f"cannot serve on {clean(args.host)}:{args.port} ({e.strerror or e}): "
                "choose another --port (0 picks a free one) or --host"
            ) from None
        d = sim.data
        print(
            f"Vobiz API simulator on {url}: {d.customers} customers, days "
            f"{d.day_list[0]}..{d.day_list[-1]}, partner id {sim.config.auth_id}",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await sim.stop()

    with contextlib.suppress(KeyboardInterrupt):
        loop.run(serve())
    return 0
