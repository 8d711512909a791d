"""Small commands: ``get`` (one CDR), ``accounts`` (the listing), ``probe-dates``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

import orjson

from harvester.api.accounts import discover_accounts
from harvester.api.client import Client, RetryPolicy
from harvester.api.endpoints import SCOPES, list_params, list_path, one_path
from harvester.api.pacing import Pacer
from harvester.cli.common import add_source, check_source, probe_account, token
from harvester.config import parse_date
from harvester.errors import NotFound, UsageError, clean
from harvester.harvest import loop
from harvester.records.decode import Collector, decode_json, decode_page


def _client(args: argparse.Namespace, token: str, base_url: str) -> Client:
    if not args.auth_id or not token:
        raise UsageError(
            "no credentials: pass --auth-id and --auth-token (or --auth-token-file), "
            "or set VOBIZ_AUTH_ID and VOBIZ_AUTH_TOKEN"
        )
    return Client(
        base_url,
        args.auth_id,
        token,
        Pacer(),
        concurrency=4,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        policy=RetryPolicy(retries=args.retries),
    )


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines.append("  ".join("-" * widths[c] for c in cols))
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


async def _get(args: argparse.Namespace, client: Client) -> int:
    account = args.customer or (args.auth_id if args.scope == "account" else None)
    if not account:
        raise UsageError("get needs --customer AUTH_ID (the customer the call belongs to)")
    try:
        doc = await client.get(one_path(args.scope, account, args.uuid), None, decode_json, "CDR")
    except NotFound:
        sys.stderr.write(f"vobiz-harvest: CDR {args.uuid} not found for {account}\n")  # both checked ids
        return 1
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"]  # the account endpoint wraps the record as {data, success}
    if args.format == "table":
        print("\n".join(f"{clean(k, 40):<20} {clean(v, 400)}" for k, v in doc.items()))
    else:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _accounts(args: argparse.Namespace, client: Client) -> int:
    listing = await discover_accounts(client)
    accounts = listing.accounts
    if args.json:
        print(orjson.dumps(accounts).decode())
    else:
        cols = ["auth_id", "name", "timezone", "is_active", "currency"]
        print(_table(accounts, cols))
        print(f"\n{len(accounts)} accounts")
    for shown_id, problem in listing.rejected.items():
        sys.stderr.write(f"vobiz-harvest: the listing's customer id {shown_id} {problem}: left out\n")
    return 1 if listing.rejected else 0


async def _probe(args: argparse.Namespace, client: Client) -> int:
    day = parse_date(args.date, "--date")
    account = await probe_account(args, client)
    path = list_path(args.scope, account)

    async def total(start: dt.date, end: dt.date) -> int:
        params = list_params(start, {}, 1, 1, (end - start).days)
        return (await client.get(path, params, lambda b: decode_page(b, 1, 1), "window probe")).total

    nxt = day + dt.timedelta(days=1)
    a, c, b = await total(day, day), await total(nxt, nxt), await total(day, nxt)
    window = (
        "unknown (no calls)"
        if b == 0
        else "exclusive"
        if a == c == 0
        else "inclusive"
        if b == a + c
        else "unclear"
    )
    offset = 1 if window == "exclusive" else 0
    first = await client.get(
        path, list_params(day, {}, 1, 100, offset), lambda b: decode_page(b, 1, 100), "page 1"
    )
    got = Collector()
    got.add(first)
    if first.pages > 1:
        last = await client.get(
            path,
            list_params(day, {}, first.pages, first.per_page, offset),
            lambda b: decode_page(b, first.pages, first.per_page),
            "last page",
        )
        got.add(last)
    times = [t for t in got.table().column("start_time").to_pylist() if t is not None]
    lo = min(times) if times else None
    hi = max(times) if times else None
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC)
    out = {
        "date": day.isoformat(),
        "scope": args.scope,
        "account": account,
        "end_date": window,
        "total": first.total,
        "earliest_start_time": lo.isoformat() if lo else None,
        "latest_start_time": hi.isoformat() if hi else None,
        "offset_hours_from_utc_midnight": round((midnight - lo).total_seconds() / 3600, 2) if lo else None,
        "buckets_as_utc_day": bool(lo and hi and lo >= midnight and hi < midnight + dt.timedelta(days=1)),
    }
    if args.json:
        print(orjson.dumps(out).decode())
    else:
        print("\n".join(f"{k:<32} {v}" for k, v in out.items()))
    return 0


def command(args: argparse.Namespace) -> int:
    """``get``, ``accounts`` or ``probe-dates``, by ``args.command``."""
    handler = {"get": _get, "accounts": _accounts, "probe-dates": _probe}[args.command]
    base_url = check_source(args)

    async def go() -> int:
        async with _client(args, token(args), base_url) as client:
            return await handler(args, client)

    return loop.run(go())


def add_parsers(sub: Any) -> None:
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
    add_source(p)
    a = sub.add_parser(
        "accounts",
        help="list the partner's customers",
        description="List the partner's customers (never their tokens).",
    )
    a.add_argument("--json", action="store_true")
    add_source(a)
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
    add_source(d)
