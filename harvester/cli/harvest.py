"""``vobiz-harvest harvest``: flags → a checked :class:`HarvestConfig` → a run → its report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from harvester.api.endpoints import FILTER_FLAGS
from harvester.cli.common import PROG, add_logging, add_source, token, utc_today
from harvester.cli.dryrun import dry_run
from harvester.cli.progress import Progress, choose_mode
from harvester.config import (
    DEFAULTS,
    HarvestConfig,
    check_range,
    parse_date,
    parse_partition,
    parse_rate,
    validate,
)
from harvester.errors import EXIT_USAGE, UsageError
from harvester.harvest import report
from harvester.harvest.run import run_harvest
from harvester.lake.store import is_uri
from harvester.logs import mask_secret


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "harvest",
        help="harvest CDRs into a Parquet lake",
        description="Harvest every CDR of a date range into Hive-partitioned Parquet.",
    )
    add_source(p)
    g = p.add_argument_group("what to harvest")
    g.add_argument(
        "--scope",
        default=DEFAULTS["scope"],
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
    g.add_argument(
        "--fetch",
        default=DEFAULTS["fetch"],
        help="partner scope: 'global' reads a day of every customer through the partner feed "
        "(/partner/cdrs, the fewest requests), 'per-customer' one customer-day at a time; "
        "'auto' (default) uses the feed when its records name the listing's customers",
    )
    g.add_argument("--start-date", help="first day, YYYY-MM-DD (default: yesterday, UTC)")
    g.add_argument("--end-date", help="last day, inclusive (default: --start-date or yesterday)")
    g.add_argument(
        "--lookback",
        type=int,
        default=DEFAULTS["lookback"],
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
        default=DEFAULTS["rate"],
        help="requests/s for this credential: a number, 'auto' (find the server's "
        "limit; default) or 'unlimited'",
    )
    t.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULTS["concurrency"],
        help="requests in flight (default %(default)s)",
    )
    t.add_argument(
        "--decode-workers",
        default=DEFAULTS["decode_workers"],
        metavar="N",
        help="processes that decode pages beside the event loop: 'auto' (default: one per core "
        "this process may use, by its CPU affinity and container quota, at most 3; 0 on one core; "
        "started only while requests go at 100/s or more) or 0 to decode on the loop",
    )
    t.add_argument(
        "--stream-rows",
        type=int,
        default=DEFAULTS["stream_rows"],
        metavar="N",
        help="a closed day's shard of more than N records is written to its file a row group at a "
        "time as its pages arrive, instead of held in memory (default %(default)s)",
    )
    t.add_argument(
        "--per-page",
        type=int,
        default=DEFAULTS["per_page"],
        help="records per page, 1-100 (default %(default)s)",
    )
    t.add_argument(
        "--max-body-mb",
        type=int,
        default=DEFAULTS["max_body_mb"],
        metavar="MB",
        help="an API answer larger than this, decompressed, fails its shard (default %(default)s; a page "
        "of 100 CDRs is about 0.15 MB)",
    )
    t.add_argument(
        "--max-runtime",
        type=float,
        default=None,
        help="stop cleanly after this many seconds (committed shards kept; exit 1)",
    )
    t.add_argument(
        "--partition",
        metavar="I/N",
        help="run only part I of N disjoint parts of the plan (by customer × day), locking that "
        "part, not the lake: N workers harvest one lake at once",
    )
    t.add_argument(
        "--rate-store",
        metavar="redis://HOST:PORT/DB",
        default=os.environ.get("VOBIZ_RATE_STORE"),
        help="share --rate between every worker of this credential through Redis (env VOBIZ_RATE_STORE)",
    )
    t.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="as --partition, with I from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)",
    )
    c = p.add_argument_group("completeness")
    c.add_argument(
        "--verify-attempts",
        type=int,
        default=DEFAULTS["verify_attempts"],
        help="fetches of a shard before it is declared unverified (default %(default)s)",
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
    add_logging(o)


def harvest_config(args: argparse.Namespace, today: dt.date | None = None) -> HarvestConfig:
    """Flags and environment → a validated :class:`HarvestConfig`."""
    today = today or utc_today()
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
        base_url=args.base_url,
        insecure=args.insecure,
        auth_id=args.auth_id,
        auth_token=token(args),
        out=args.out if is_uri(args.out) else Path(args.out),
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
        decode_workers=args.decode_workers,
        stream_rows=args.stream_rows,
        s3_endpoint_url=args.s3_endpoint_url,
        s3_region=args.s3_region,
        max_body_mb=args.max_body_mb,
        rate_store=args.rate_store,
        fetch=args.fetch,
        partition=parse_partition(args.partition, args.partitions, os.environ.get("JOB_COMPLETION_INDEX")),
    )
    check_range("--progress-interval", args.progress_interval, 0.1, 86400, "use 0.1 to 86400 seconds")
    return validate(cfg, yes=args.yes)


def _emit(rep: dict[str, Any], args: argparse.Namespace) -> int:
    """The report: JSON on stdout with ``--json``; on stderr the summary table, or for a
    fatal error (exit 2-4) one line, which ``--quiet`` keeps (and so does an incomplete run,
    as its one-line result)."""
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


def command(args: argparse.Namespace) -> int:
    cfg = harvest_config(args)
    mask_secret(cfg.auth_token)
    if args.dry_run:
        return dry_run(cfg, probe=args.probe, as_json=args.json)
    mode = choose_mode(args.progress, args.quiet)
    rep = run_harvest(cfg, progress=lambda h: Progress(h, mode, args.progress_interval))
    return _emit(rep, args)
