"""What to fetch: account discovery, and shards of (account or global feed) × one day.

A shard is the smallest unit the API filters on. Shards are fetched, written, committed and
verified on their own, which gives parallelism, resume and idempotence.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from harvester.client import Client
from harvester.decode import decode_json
from harvester.endpoints import ACCOUNTS, accounts_params, customer_id_problem
from harvester.errors import ListingError, clean, shown

log = logging.getLogger("harvester.plan")

# The only account fields ever kept: the listing also carries each customer's auth_token.
SAFE_ACCOUNT_FIELDS = ("auth_id", "name", "timezone", "is_active", "enabled", "created_at")


@dataclass(frozen=True, order=True)
class Shard:
    """One day of one account's CDRs (``account`` None = the global partner feed)."""

    day: dt.date
    scope: str
    account: str | None

    @property
    def who(self) -> str:
        return self.account or "global"

    @property
    def key(self) -> str:
        return f"{self.day.isoformat()}/{self.who}"

    @property
    def file_name(self) -> str:
        return f"cdr-{self.who}.parquet"


def days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Every day from ``start`` to ``end``, inclusive."""
    d = start
    while d <= end:
        yield d
        d += dt.timedelta(days=1)


def shards_for(scope: str, accounts: Iterable[str | None], span: Iterable[dt.date]) -> list[Shard]:
    """The cross product, newest day first (recent data lands first)."""
    span = list(span)
    accounts = list(accounts)
    return [Shard(day, scope, acc) for day in sorted(span, reverse=True) for acc in accounts]


def safe_account(raw: dict[str, Any]) -> dict[str, Any]:
    """An account object stripped of everything but harmless fields (never the token), its
    text cleaned for a terminal."""
    out = {k: raw.get(k) for k in SAFE_ACCOUNT_FIELDS}
    tier = raw.get("pricing_tier")
    out["currency"] = tier.get("currency") if isinstance(tier, dict) else None
    return {k: clean(v, 80) if isinstance(v, str) else v for k, v in out.items()}


MAX_ACCOUNTS = 200_000  # a listing longer than this is not believed (nor walked further)


@dataclass
class Listing:
    """The partner's customers: those that can be harvested, and ids that cannot (shown
    safely, with the reason), which the run reports as failed."""

    accounts: list[dict[str, Any]]
    rejected: dict[str, str]


def _count(value: Any) -> int | None:
    """A non-negative integer the listing sent, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


async def discover_accounts(client: Client, per_page: int = 100, tries: int = 3) -> Listing:
    """Every customer of the partner, following every page of the listing.

    The listing is bounded like everything a server sends: it stops at an empty page, at its
    own ``total``, at a page that brings no id it has not seen (a listing that repeats), and
    past :data:`MAX_ACCOUNTS`. The distinct ids must then equal ``total`` (when it says one);
    a listing that shifts while it is walked is walked again (``tries`` times) before the
    run gives up with :class:`ListingError`. An ``auth_id`` that cannot be a customer id
    (see :func:`harvester.endpoints.customer_id_problem`) is set aside, never harvested.
    """
    last = ""
    for _ in range(tries):
        seen: dict[str, dict[str, Any]] = {}
        rejected: dict[str, str] = {}
        total: int | None = None
        repeated = False
        page = 1
        while True:
            doc = await client.get(
                ACCOUNTS, accounts_params(page, per_page), decode_json, f"accounts page {page}"
            )
            if not isinstance(doc, dict) or not isinstance(doc.get("accounts"), list):
                raise ListingError(f"the partner account listing has no 'accounts' list (page {page})")
            items = doc["accounts"]
            said = _count(doc.get("total"))
            if doc.get("total") is not None and said is None:
                raise ListingError(
                    f"the partner account listing's total {shown(doc.get('total'))} is not a count"
                )
            total = said if total is None else total
            before = len(seen) + len(rejected)
            for raw in items:
                if not isinstance(raw, dict):
                    rejected.setdefault(shown(raw), "is not an account object")
                    continue
                aid = raw.get("auth_id")
                problem = customer_id_problem(aid)
                if problem is not None or not isinstance(aid, str):
                    rejected.setdefault(shown(aid), problem or "is not a string")
                elif aid not in seen:
                    seen[aid] = safe_account(raw)
            found = len(seen) + len(rejected)
            if found > MAX_ACCOUNTS:
                raise ListingError(
                    f"the partner account listing goes past {MAX_ACCOUNTS} accounts: not believed"
                )
            if not items or (total is not None and found >= total):
                break
            if found == before:
                repeated = True  # a page of ids already seen: the listing repeats itself
                break
            size = _count(doc.get("size")) or _count(doc.get("per_page")) or len(items)
            if total is not None and page * max(size, 1) >= total + per_page:
                break
            page += 1
        found = len(seen) + len(rejected)
        if not repeated and (total is None or found == total):
            return Listing(sorted(seen.values(), key=lambda a: a["auth_id"]), rejected)
        last = (
            f"page {page} repeats earlier pages"
            if repeated
            else f"found {found} distinct accounts but the listing says total={total}"
        )
        log.warning("account listing incomplete, walking it again: %s", last)
    raise ListingError(f"partner account listing incomplete: {last}")
