"""The run's settings as one frozen dataclass, validated with one-line errors."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from harvester.api.endpoints import SCOPES, customer_id_problem
from harvester.errors import UsageError, clean, shown

DEFAULT_BASE_URL = "https://api.vobiz.ai"
STATUSES = ("answered", "failed", "busy", "no_answer")
DIRECTIONS = ("inbound", "outbound")
MAX_DAYS_WITHOUT_YES = 366
FETCH_MODES = ("auto", "per-customer", "global")


@dataclass(frozen=True)
class HarvestConfig:
    """Everything one harvest run needs to know."""

    base_url: str
    auth_id: str
    auth_token: str = field(repr=False)
    out: Path | str  # a directory, or an object-store URI (s3://bucket/prefix)
    start_date: dt.date
    end_date: dt.date
    today: dt.date
    scope: str = "partner"
    customers: tuple[str, ...] = ()
    rate: float | str | None = "auto"
    concurrency: int = 16
    per_page: int = 100
    filters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 30.0
    connect_timeout: float = 10.0
    retries: int = 8
    verify_attempts: int = 3
    strict_sums: bool = False
    allow_unverified: bool = False
    lookback: int = 0
    refresh: bool = False
    max_runtime: float | None = None
    decode_workers: int | str = "auto"  # processes decoding pages beside the event loop: "auto" or 0-16
    stream_rows: int = 50_000  # a closed-day shard larger than this is written as it arrives
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    max_body_mb: int = 64  # an answer larger than this (decompressed) fails its shard
    partition: tuple[int, int] | None = None  # (I, N): run only part I of N of the plan
    rate_store: str | None = None  # redis://HOST:PORT/DB: one --rate (a number or auto) for every worker
    fetch: str = "auto"  # partner scope: auto | per-customer | global (the partner feed, a day at a time)
    insecure: bool = False  # allow plain http to a remote host (the token then crosses in clear text)

    @property
    def workers(self) -> int:
        """Decode processes this run may start (``decode_workers`` with "auto" resolved)."""
        return parse_workers(self.decode_workers)

    def workers_at(self, rate: float | None) -> int:
        """Decode processes worth running while requests go at ``rate`` a second (None: no
        limit): the number asked for, or with ``auto`` :attr:`workers` from
        :data:`WORKERS_FROM_RATE` on and none below it."""
        auto = str(self.decode_workers).strip().lower() == "auto"
        return self.workers if not auto or rate is None or rate >= WORKERS_FROM_RATE else 0

    @property
    def identity(self) -> dict[str, object]:
        """What a lake holds: one scope and one filter set (see lake.Lake.open)."""
        return {"scope": self.scope, "filters": dict(sorted(self.filters.items()))}


def parse_date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {shown(value)} is not a date: use YYYY-MM-DD") from None


def check_id(value: str, flag: str, what: str = "a customer auth_id") -> str:
    """A customer id or uuid the user typed, or a one-line :class:`UsageError` naming it."""
    problem = customer_id_problem(value)
    if problem is None:
        return value
    if not value:
        raise UsageError(f"{flag} is empty: give {what}, e.g. {flag} MA_XXXXXXXX")
    if "," in value:
        raise UsageError(f"{flag} {shown(value)} holds a comma: repeat {flag} once for each id")
    raise UsageError(f"{flag} {shown(value)} {problem}: give {what} exactly as the API lists it")


def check_base_url(url: str, insecure: bool = False) -> str:
    """A usable base URL: ``scheme://host[:port]`` and nothing more (no user or password,
    no path, query or fragment); plain http only to loopback unless ``insecure``. Messages
    name the URL without its user and password."""
    fix = "use the API's address alone, e.g. https://api.vobiz.ai"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise UsageError(f"--base-url {shown(_without_password(url))} is not a URL: {fix}") from None
    safe = shown(_without_password(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {safe} is not an http(s) URL: {fix}")
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"--base-url {safe} carries a user or password, which is never sent: {fix}, "
            "with the credentials in --auth-id and --auth-token-file (or VOBIZ_AUTH_ID / VOBIZ_AUTH_TOKEN)"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise UsageError(f"--base-url {safe} has a path or query (the harvester adds /api/v1/...): {fix}")
    if parts.scheme == "http" and not insecure and not _is_loopback(parts.hostname):
        raise UsageError(
            f"--base-url {safe} is plain http to a remote host: the token would cross the "
            "network in clear text; use https, or pass --insecure if you must"
        )
    return f"{parts.scheme}://{parts.netloc}"


def _without_password(url: str) -> str:
    """``url`` with anything before an ``@`` in its authority replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return clean(url, 200)
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return clean(f"{scheme}://{authority}{slash}{tail}", 200)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_range(name: str, value: float, low: float, high: float, fix: str) -> None:
    if not (low <= value <= high):
        raise UsageError(f"{name} {value:g} is out of range: {fix}")


def validate(cfg: HarvestConfig, yes: bool = False) -> HarvestConfig:
    """The settings, checked: :class:`UsageError` (one line, naming value and fix) for a bad
    one. The base URL and a rate given as text come back in the form the run uses."""
    cfg = replace(cfg, base_url=check_base_url(cfg.base_url, cfg.insecure))
    if cfg.scope not in SCOPES:
        raise UsageError(f"--scope {cfg.scope!r} is unknown: use one of {', '.join(SCOPES)}")
    if cfg.scope == "global" and cfg.customers:
        raise UsageError("--customer does not go with --scope global (the feed covers every customer)")
    for customer in cfg.customers:
        check_id(customer, "--customer")
    if cfg.scope == "account" and len(cfg.customers) > 1:
        raise UsageError("--scope account harvests one account: give --customer once (or not at all)")
    if not str(cfg.out).strip():
        raise UsageError("--out is empty: name the lake's directory or s3://bucket/prefix")
    if not cfg.auth_id or not cfg.auth_token:
        raise UsageError(
            "no credentials: pass --auth-id and --auth-token (or --auth-token-file), "
            "or set VOBIZ_AUTH_ID and VOBIZ_AUTH_TOKEN"
        )
    if cfg.start_date > cfg.end_date:
        raise UsageError(f"--start-date {cfg.start_date} is after --end-date {cfg.end_date}: swap them")
    if cfg.end_date > cfg.today:
        raise UsageError(
            f"--end-date {cfg.end_date} is in the future (today is {cfg.today} UTC): use today or earlier"
        )
    span = (cfg.end_date - cfg.start_date).days + 1 + cfg.lookback
    if span > MAX_DAYS_WITHOUT_YES and not yes:
        raise UsageError(
            f"{span} days requested: more than {MAX_DAYS_WITHOUT_YES}; pass --yes if you mean it"
        )
    check_range("--per-page", cfg.per_page, 1, 100, "use 1 to 100")
    check_range("--concurrency", cfg.concurrency, 1, 256, "use 1 to 256")
    parse_workers(cfg.decode_workers)
    check_range("--stream-rows", cfg.stream_rows, 100, 10**9, "use 100 or more records")
    if cfg.rate is not None and not isinstance(cfg.rate, float):  # "auto", "unlimited", or a number as text
        cfg = replace(cfg, rate=parse_rate(str(cfg.rate)))
    if isinstance(cfg.rate, float):
        check_range("--rate", cfg.rate, 0.01, 10_000, "use 0.01 to 10000, 'auto' or 'unlimited'")
    check_range("--lookback", cfg.lookback, 0, 3650, "use 0 to 3650 days")
    check_range("--timeout", cfg.timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--connect-timeout", cfg.connect_timeout, 0.1, 3600, "use seconds between 0.1 and 3600")
    check_range("--retries", cfg.retries, 0, 100, "use 0 to 100")
    check_range("--verify-attempts", cfg.verify_attempts, 1, 20, "use 1 to 20")
    check_range("--max-body-mb", cfg.max_body_mb, 1, 4096, "use 1 to 4096 MB")
    if cfg.rate_store is not None:
        if urlsplit(cfg.rate_store).scheme not in ("redis", "rediss"):
            raise UsageError(
                f"--rate-store {shown(cfg.rate_store)} is not a Redis URL: use redis://HOST:PORT/DB"
            )
        if cfg.rate is None or cfg.rate == "unlimited":
            raise UsageError("--rate-store shares a rate between workers: give --rate a number or 'auto'")
    if cfg.partition is not None:
        parse_partition("/".join(map(str, cfg.partition)), None, None)
    if cfg.max_runtime is not None:
        check_range("--max-runtime", cfg.max_runtime, 0.1, 30 * 86400, "use seconds, more than 0")
    if cfg.fetch not in FETCH_MODES:
        raise UsageError(f"--fetch {shown(cfg.fetch)} is unknown: use {', '.join(FETCH_MODES)}")
    if cfg.fetch == "global" and (cfg.scope != "partner" or cfg.customers):
        raise UsageError(
            "--fetch global reads every customer's day through the partner feed: "
            "it needs --scope partner and no --customer"
        )
    status = cfg.filters.get("status")
    if status is not None and status not in STATUSES:
        raise UsageError(f"--status {status!r} is unknown: use one of {', '.join(STATUSES)}")
    direction = cfg.filters.get("call_direction")
    if direction is not None and direction not in DIRECTIONS:
        raise UsageError(f"--call-direction {direction!r} is unknown: use inbound or outbound")
    return cfg


def parse_partition(value: str | None, partitions: int | None, index: str | None) -> tuple[int, int] | None:
    """``--partition I/N``, else ``--partitions N`` with Kubernetes' ``JOB_COMPLETION_INDEX``
    (``index``) as I; None when neither is given."""
    if value is None and partitions is None:
        return None
    fix = "use I/N with 0 <= I < N, e.g. --partition 0/3"
    if value is not None:
        i, sep, n = value.partition("/")
    else:
        if index is None:
            raise UsageError("--partitions needs JOB_COMPLETION_INDEX (an Indexed Job) or --partition I/N")
        i, sep, n = index, "/", str(partitions)
    try:
        part = (int(i), int(n))
    except ValueError:
        raise UsageError(f"--partition {shown(value or f'{index}/{partitions}')} is not I/N: {fix}") from None
    if not sep or not 0 <= part[0] < part[1] or part[1] > 10_000:
        raise UsageError(f"--partition {part[0]}/{part[1]} is out of range: {fix}")
    return part


# Decode workers cost a start and memory (a fork server, a resource tracker and two workers
# hold about 120 MB before they decode a page); they pay only when pages come fast. Below
# this many requests a second (a real API's limit is usually far below it), the event loop
# decodes every page itself in a few percent of a core: a page of 100 records takes about
# 0.6 ms.
WORKERS_FROM_RATE = 100.0


def auto_workers() -> int:
    """Decode processes for this machine: one per usable core, at most 3 (one event loop
    fetches about as fast as three decode); none on one core. The measured effect of each
    count is in the README (``python -m benchmarks --scenario workers``)."""
    cores = usable_cores()
    return 0 if cores < 2 else min(3, cores)


def usable_cores() -> int:
    """The cores this process may use: the machine's, or fewer where its CPU affinity or its
    container's CPU quota says so (a Kubernetes pod limited to 1 CPU on a 64-core node may
    use one, and three decode processes there would only queue for it and hold memory)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = quota_cores(
        _read_small("/sys/fs/cgroup/cpu.max"),
        _read_small("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        _read_small("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    return min(cores, quota) if quota is not None else cores  # each is at least 1


def quota_cores(v2: str | None, v1_quota: str | None, v1_period: str | None) -> int | None:
    """Whole cores a cgroup CPU quota allows (rounded down, at least 1), from cgroup v2's
    ``cpu.max`` ("max 100000", "150000 100000") or v1's ``cfs_quota_us`` and
    ``cfs_period_us``; None where there is no quota or the text is not one."""
    quota, period = [*v2.split(), ""][:2] if v2 is not None else (v1_quota, v1_period)
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:  # "max" (v2) or a missing file: no quota
        return None
    if q <= 0 or p <= 0:  # -1 (v1): no quota
        return None
    return max(1, q // p)


def _read_small(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(100)
    except OSError:
        return None


def parse_workers(value: str | int) -> int:
    """``auto`` (see :func:`auto_workers`) or a number of decode workers, 0 to 16."""
    if str(value).strip().lower() == "auto":
        return auto_workers()
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--decode-workers {shown(value)} is not a number: use 0 to 16 or 'auto'") from None
    check_range("--decode-workers", n, 0, 16, "use 0 to 16 or 'auto'")
    return n


def parse_rate(value: str) -> float | str | None:
    """``auto``, ``unlimited`` or a positive number of requests per second."""
    v = value.strip().lower()
    if v == "auto":
        return "auto"
    if v in ("unlimited", "none"):
        return None
    try:
        rate = float(v)
    except ValueError:
        raise UsageError(
            f"--rate {shown(value)} is not a number: use e.g. 20, 'auto' or 'unlimited'"
        ) from None
    check_range("--rate", rate, 0.01, 10_000, "use 0.01 to 10000, 'auto' or 'unlimited'")
    return rate


DEFAULTS = {f.name: f.default for f in fields(HarvestConfig) if f.default is not MISSING}
"""Every setting's default, defined once (here, by :class:`HarvestConfig`); the command
line's flags read theirs from this."""
