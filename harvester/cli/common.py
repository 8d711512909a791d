"""What the commands share: the parser class, credentials and source flags, their checks."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any, NoReturn

from harvester.api.accounts import discover_accounts
from harvester.api.client import Client
from harvester.config import DEFAULT_BASE_URL, DEFAULTS, check_base_url, check_id, check_range
from harvester.errors import EXIT_USAGE, UsageError

PROG = "vobiz-harvest"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def add_source(p: argparse.ArgumentParser) -> None:
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
    g.add_argument(
        "--timeout", type=float, default=DEFAULTS["timeout"], help="seconds per request (default %(default)s)"
    )
    g.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULTS["connect_timeout"],
        help="seconds to connect (default %(default)s)",
    )
    g.add_argument(
        "--retries", type=int, default=DEFAULTS["retries"], help="retries per request (default %(default)s)"
    )


def token(args: argparse.Namespace) -> str:
    if args.auth_token_file is not None:
        try:
            return args.auth_token_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"--auth-token-file {args.auth_token_file}: {e.strerror}") from None
    return args.auth_token or os.environ.get("VOBIZ_AUTH_TOKEN", "")


def check_source(args: argparse.Namespace) -> str:
    """The checks every API command shares: ids typed by the user, timeouts, the base URL."""
    if getattr(args, "customer", None) is not None:
        check_id(args.customer, "--customer")
    if getattr(args, "uuid", None) is not None:
        check_id(args.uuid, "uuid", "the CDR's uuid")
    check_range("--timeout", args.timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--connect-timeout", args.connect_timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--retries", args.retries, 0, 100, "use 0 to 100")
    return check_base_url(args.base_url, args.insecure)


def add_logging(g: Any) -> None:
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


async def probe_account(args: argparse.Namespace, client: Client) -> str | None:
    """The account a one-shard command looks at: ``--customer``, else the first customer of
    the listing (partner scope), the credential's own (account scope), none (global)."""
    account: str | None = args.customer
    if args.scope == "partner" and not account:
        found = (await discover_accounts(client)).accounts
        if not found:
            raise UsageError("the partner has no customers: pass --customer AUTH_ID")
        account = found[0]["auth_id"]
    elif args.scope == "account":
        account = account or args.auth_id
    return account
