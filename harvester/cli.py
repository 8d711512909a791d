"""The ``vobiz-harvest`` command line: harvest, sim, demo, get, accounts, probe-dates.

Every error an operator can cause ends as one line on stderr and an exit code, never a
traceback: see :mod:`harvester.errors` for the codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import orjson

from harvester import __version__, loop
from harvester.config import (
    DEFAULT_BASE_URL,
    HarvestConfig,
    check_base_url,
    check_id,
    check_range,
    parse_date,
    parse_rate,
    parse_workers,
    validate,
)
from harvester.endpoints import FILTER_FLAGS, SCOPES
from harvester.errors import EXIT_FATAL, EXIT_USAGE, HarvestError, UsageError, clean

PROG = "vobiz-harvest"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# -- the harvest command -------------------------------------------------------------------
def _add_source(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("source and credentials")
    g.add_argument(
        "--base-url",
        default=os.environ.get("VOBIZ_BASE_URL", DEFAULT_BASE_URL),
        help="API base URL (env VOBIZ_BASE_URL; default %(default)s)",
    )
    g.add_argument(
        "--auth-id",
        default=os.environ.get("VOBIZ_AUTH_ID", ""),
        help="X-Auth-ID: partner id, or account id for --scope account (env VOBIZ_AUTH_ID)",
    )
    g.add_argument(
        "--auth-token",
        default=None,
        help="X-Auth-Token (env VOBIZ_AUTH_TOKEN; prefer --auth-token-file or the env, "
        "which keep it out of ps)",
    )
    g.add_argument("--auth-token-file", type=Path, default=None, help="read the token from this file")
    g.add_argument(
        "--insecure", action="store_true", help="allow a plain-http base URL to a non-loopback host"
    )
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    g.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to connect (default 10)")
    g.add_argument("--retries", type=int, default=8, help="retries per request (default 8)")


def _token(args: argparse.Namespace) -> str:
    if args.auth_token_file is not None:
        try:
            return args.auth_token_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"--auth-token-file {args.auth_token_file}: {e.strerror}") from None
    return args.auth_token or os.environ.get("VOBIZ_AUTH_TOKEN", "")


def _harvest_parser(sub: Any) -> None:
    p = sub.add_parser(
        "harvest",
        help="harvest CDRs into a Parquet lake",
        description="Harvest every CDR of a date range into Hive-partitioned Parquet.",
    )
    _add_source(p)
    g = p.add_argument_group("what to harvest")
    g.add_argument(
        "--scope",
        default="partner",
        help="partner (each customer via /partner/accounts/{id}/cdrs), global "
        "(/partner/cdrs) or account (/Account/{auth_id}/cdr); default partner",
    )
    g.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="AUTH_ID",
        help="a customer auth_id (repeatable); default: every account in the listing",
    )
    g.add_argument("--start-date", help="first day, YYYY-MM-DD (default: yesterday, UTC)")
    g.add_argument("--end-date", help="last day, inclusive (default: --start-date or yesterday)")
    g.add_argument(
        "--lookback",
        type=int,
        default=0,
        help="also re-check the N days before --start-date (probe page 1 of each "
        "committed shard; re-harvest only what changed)",
    )
    g.add_argument("--refresh", action="store_true", help="re-harvest committed shards too")
    g.add_argument("--yes", action="store_true", help="allow a range longer than 366 days")
    f = p.add_argument_group("API filters (passed through to the API)")
    f.add_argument("--call-direction", help="inbound or outbound")
    f.add_argument("--status", help="answered, failed, busy or no_answer")
    f.add_argument("--hangup-cause", help="e.g. NORMAL_CLEARING")
    f.add_argument("--min-duration", type=int, help="seconds")
    f.add_argument("--from-number", help="caller number (substring or E.164)")
    f.add_argument("--to-number", help="destination number (substring or E.164)")
    t = p.add_argument_group("throughput")
    t.add_argument(
        "--rate",
        default="auto",
        help="requests/s for this credential: a number, 'auto' (find the server's "
        "limit; default) or 'unlimited'",
    )
    t.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    t.add_argument(
        "--decode-workers",
        default="auto",
        metavar="N",
        help="processes that decode pages beside the event loop: 'auto' (default: one per core, "
        "at most 3; 0 on one core or without fork) or 0 to decode on the loop",
    )
    t.add_argument(
        "--stream-rows",
        type=int,
        default=20_000,
        metavar="N",
        help="a closed day's shard of more than N records is written to its file a row group at a "
        "time as its pages arrive, instead of held in memory (default 20000)",
    )
    t.add_argument("--per-page", type=int, default=100, help="records per page, 1-100 (default 100)")
    t.add_argument(
        "--max-body-mb",
        type=int,
        default=64,
        metavar="MB",
        help="an API answer larger than this, decompressed, fails its shard (default 64; a page "
        "of 100 CDRs is about 0.15 MB)",
    )
    t.add_argument(
        "--max-runtime",
        type=float,
        default=None,
        help="stop cleanly after this many seconds (committed shards kept; exit 1)",
    )
    c = p.add_argument_group("completeness")
    c.add_argument(
        "--verify-attempts",
        type=int,
        default=3,
        help="fetches of a shard before it is declared unverified (default 3)",
    )
    c.add_argument(
        "--strict-sums",
        action="store_true",
        help="a shard whose sums differ from the API summary is unverified",
    )
    c.add_argument(
        "--allow-unverified",
        action="store_true",
        help="exit 0 even if some shards could not be proven complete (still reported)",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--out",
        default="vobiz-lake",
        help="the lake: a directory, or s3://bucket/prefix (also gs://, abfs:// where pyarrow "
        "supports them); default ./vobiz-lake",
    )
    o.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3-compatible endpoint (MinIO, Ceph, moto …; env AWS_ENDPOINT_URL)",
    )
    o.add_argument(
        "--s3-region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="S3 region (env AWS_REGION); credentials come from the usual AWS environment",
    )
    o.add_argument("--json", action="store_true", help="print the run summary as one JSON object on stdout")
    _add_logging(o)


def _add_logging(g: Any) -> None:
    g.add_argument("--quiet", "-q", action="store_true", help="no summary table and no progress on stderr")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress bar on stderr (default: on when stderr is a terminal; "
        "otherwise a log line every --progress-interval seconds)",
    )
    g.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds between progress log lines when stderr is not a terminal (default 30)",
    )
    g.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="info shows each retry and 429 wait (default warning)",
    )
    g.add_argument("--log-format", default="text", choices=["text", "json"])
    g.add_argument("--log-file", type=Path, default=None, help="log here instead of stderr")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (customers, days, shards, requests, time at --rate); write nothing",
    )
    g.add_argument(
        "--probe",
        action="store_true",
        help="with --dry-run: probe page 1 of each shard to count the requests exactly",
    )
    g.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="read flags from a TOML file (keys are flag names); flags given here override it",
    )


def harvest_config(args: argparse.Namespace, today: dt.date | None = None) -> HarvestConfig:
    """Flags and environment → a validated :class:`HarvestConfig`."""
    from harvester import store

    today = today or _utc_today()
    yesterday = today - dt.timedelta(days=1)
    start = parse_date(args.start_date, "--start-date") if args.start_date else None
    end = parse_date(args.end_date, "--end-date") if args.end_date else None
    if start is None:
        start = end if end is not None and end < yesterday else yesterday
    if end is None:
        end = max(start, yesterday) if args.start_date else start
    filters: dict[str, str] = {}
    for name in FILTER_FLAGS:
        value = getattr(args, name)
        if value is not None and value != "":
            filters[name] = str(value)
    if "status" in filters:
        filters["status"] = filters["status"].replace("-", "_")
    if not args.out.strip():
        raise UsageError("--out is empty: name the lake's directory or s3://bucket/prefix")
    if args.min_duration is not None and args.min_duration < 0:
        raise UsageError(f"--min-duration {args.min_duration} is negative: use 0 or more seconds")
    cfg = HarvestConfig(
        base_url=check_base_url(args.base_url, args.insecure),
        auth_id=args.auth_id,
        auth_token=_token(args),
        out=args.out if store.is_uri(args.out) else Path(args.out),
        start_date=start,
        end_date=end,
        today=today,
        scope=args.scope,
        customers=tuple(args.customer),
        rate=parse_rate(args.rate),
        concurrency=args.concurrency,
        per_page=args.per_page,
        filters=MappingProxyType(filters),
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        retries=args.retries,
        verify_attempts=args.verify_attempts,
        strict_sums=args.strict_sums,
        allow_unverified=args.allow_unverified,
        lookback=args.lookback,
        refresh=args.refresh,
        max_runtime=args.max_runtime,
        decode_workers=parse_workers(args.decode_workers),
        stream_rows=args.stream_rows,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region,
        max_body_mb=args.max_body_mb,
    )
    check_range("--progress-interval", args.progress_interval, 0.1, 86400, "use 0.1 to 86400 seconds")
    return validate(cfg, yes=args.yes)


def _emit(rep: dict[str, Any], args: argparse.Namespace) -> int:
    """The report: JSON on stdout with ``--json``; on stderr the summary table, or for a
    fatal error (exit 2-4) one line, which ``--quiet`` keeps (and so does an incomplete run,
    as its one-line result)."""
    from harvester import report

    code = int(rep["exit_code"])
    if args.json:
        sys.stdout.write(orjson.dumps(rep).decode() + "\n")
    if code >= EXIT_USAGE:
        sys.stderr.write(f"{PROG}: error: {rep['error']}\n")
    elif not args.quiet:
        sys.stderr.write(report.render(rep) + "\n")
    elif code:
        sys.stderr.write(f"{PROG}: {report.one_line(rep)}\n")
    return code


def cmd_harvest(args: argparse.Namespace) -> int:
    from harvester import lean, logs
    from harvester.progress import Progress, choose_mode
    from harvester.run import harvest

    cfg = harvest_config(args)
    logs.mask_secret(cfg.auth_token)
    if args.dry_run:
        from harvester.dryrun import dry_run

        return dry_run(cfg, probe=args.probe, as_json=args.json)
    mode = choose_mode(args.progress, args.quiet)
    lean.settle()
    rep = loop.run(harvest(cfg, progress=lambda h: Progress(h, mode, args.progress_interval)))
    return _emit(rep, args)


# -- the simulator and the demo ------------------------------------------------------------
def _sim_parser(sub: Any) -> None:
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
    from harvester.sim import Dataset, SimConfig

    end = parse_date(args.end_date, "--end-date") if args.end_date else _utc_today() - dt.timedelta(days=1)
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


def cmd_sim(args: argparse.Namespace) -> int:
    from harvester.sim import Simulator

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


def cmd_demo(args: argparse.Namespace) -> int:
    from harvester.demo import demo

    return demo(args.out, args.json)


# -- single lookups --------------------------------------------------------------------------
def _lookup_parser(sub: Any) -> None:
    p = sub.add_parser("get", help="fetch one CDR by uuid", description="Fetch one CDR by its uuid.")
    p.add_argument("uuid")
    p.add_argument(
        "--customer",
        required=False,
        metavar="AUTH_ID",
        help="the customer's auth_id (partner endpoint); omit with --scope account",
    )
    p.add_argument("--scope", default="partner", choices=["partner", "account"])
    p.add_argument("--format", default="json", choices=["json", "table"])
    _add_source(p)
    a = sub.add_parser(
        "accounts",
        help="list the partner's customers",
        description="List the partner's customers (never their tokens).",
    )
    a.add_argument("--json", action="store_true")
    _add_source(a)
    d = sub.add_parser(
        "probe-dates",
        help="show how the server buckets one day",
        description="Fetch one day and report the earliest and latest start_time "
        "returned, to see which time zone the API's day filter uses.",
    )
    d.add_argument("--date", required=True, help="YYYY-MM-DD")
    d.add_argument("--scope", default="partner", choices=list(SCOPES))
    d.add_argument("--customer", metavar="AUTH_ID", help="customer (partner scope); default: the first")
    d.add_argument("--json", action="store_true")
    _add_source(d)
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
    _add_source(b)


def _check_source(args: argparse.Namespace) -> str:
    """The checks every API command shares: ids typed by the user, timeouts, the base URL."""
    if getattr(args, "customer", None) is not None:
        check_id(args.customer, "--customer")
    if getattr(args, "uuid", None) is not None:
        check_id(args.uuid, "uuid", "the CDR's uuid")
    check_range("--timeout", args.timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--connect-timeout", args.connect_timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--retries", args.retries, 0, 100, "use 0 to 100")
    return check_base_url(args.base_url, args.insecure)


def cmd_lookup(args: argparse.Namespace) -> int:
    from harvester import lookups

    return lookups.run(args, _token(args), _check_source(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from harvester import bench

    return bench.main(args, _token(args), _check_source(args))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Bulk-harvest Vobiz call detail records into Parquet.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _harvest_parser(sub)
    _sim_parser(sub)
    demo = sub.add_parser("demo", help="harvest from the embedded simulator and query the result")
    demo.add_argument("--out", type=Path, default=Path("demo-lake"))
    demo.add_argument("--json", action="store_true")
    _lookup_parser(sub)
    return p


COMMANDS = {
    "harvest": cmd_harvest,
    "sim": cmd_sim,
    "demo": cmd_demo,
    "get": cmd_lookup,
    "accounts": cmd_lookup,
    "probe-dates": cmd_lookup,
    "bench": cmd_bench,
}


def _with_config(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a ``--config FILE.toml`` supplies defaults that flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if path is None:
        return args
    from harvester.settings import given_on_command_line, load_toml

    sub = _subparser(parser, args.command)
    defaults = load_toml(path, sub)
    for action in sub._actions:  # a repeatable flag on the command line replaces the file's list
        if isinstance(action, argparse._AppendAction) and given_on_command_line(argv, action):
            defaults.pop(action.dest, None)
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(name)


def main(argv: Sequence[str] | None = None) -> int:
    from harvester import lean

    lean.trim()
    from harvester import logs

    try:
        args = _with_config(list(sys.argv[1:] if argv is None else argv))
        logs.setup(
            getattr(args, "log_level", "warning"),
            getattr(args, "log_format", "text"),
            getattr(args, "log_file", None),
        )
        return COMMANDS[args.command](args)
    except HarvestError as e:
        return _fail(str(e), e.exit_code)
    except OSError as e:  # the machine, not the harvest: a disk, a permission, a port
        where = f" ({clean(e.filename, 200)})" if e.filename else ""
        return _fail(f"{e.strerror or type(e).__name__}{where}", EXIT_FATAL)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 1


def _fail(message: str, code: int) -> int:
    """One line on stderr, and the same in the log file's journal."""
    from harvester.logs import JOURNAL

    message = clean(message, 1000)
    sys.stderr.write(f"{PROG}: error: {message}\n")
    JOURNAL.error("run end: error (exit %d): %s", code, message)
    return code
