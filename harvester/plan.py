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
from harvester.endpoints import ACCOUNTS, accounts_params
from harvester.errors import HarvestError

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
    """An account object stripped of everything but harmless fields (never the token)."""
    out = {k: raw.get(k) for k in SAFE_ACCOUNT_FIELDS}
    tier = raw.get("pricing_tier")
    out["currency"] = tier.get("currency") if isinstance(tier, dict) else None
    return out


class ListingIncomplete(HarvestError):
    """The account listing's distinct auth_ids never matched its own total."""


async def discover_accounts(client: Client, per_page: int = 100, tries: int = 3) -> list[dict[str, Any]]:
    """Every customer of the partner, following every page of the listing.

    The distinct ``auth_id`` count must equal the listing's ``total``; a listing that shifts
    while it is walked is walked again (``tries`` times) before the run gives up.
    """
    last = ""
    for _ in range(tries):
        seen: dict[str, dict[str, Any]] = {}
        total: int | None = None
        page = 1
        while True:
            doc = await client.get(
                ACCOUNTS, accounts_params(page, per_page), decode_json, f"accounts page {page}"
            )
            if not isinstance(doc, dict) or not isinstance(doc.get("accounts"), list):
                raise HarvestError("the partner account listing has no 'accounts' list")
            items = [a for a in doc["accounts"] if isinstance(a, dict) and a.get("auth_id")]
            for raw in items:
                seen.setdefault(str(raw["auth_id"]), safe_account(raw))
            if isinstance(doc.get("total"), int):
                total = doc["total"]
            size = doc.get("size") or doc.get("per_page") or len(items) or per_page
            if not items or (total is not None and page * int(size) >= total):
                break
            page += 1
            if total is not None and page > total + 1:
                break
        if total is None or len(seen) == total:
            return sorted(seen.values(), key=lambda a: a["auth_id"])
        last = f"found {len(seen)} distinct accounts but the listing says total={total}"
        log.warning("account listing incomplete, walking it again: %s", last)
    raise ListingIncomplete(f"partner account listing incomplete: {last}")
