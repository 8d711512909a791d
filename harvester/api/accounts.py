"""The partner's customers: ``GET /api/v1/partner/accounts``, every page, bounded and
checked, with nothing kept of an account but harmless fields (never its token)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from harvester.api.client import Client
from harvester.api.endpoints import ACCOUNTS, accounts_params, customer_id_problem
from harvester.errors import ListingError, clean, shown
from harvester.records.decode import decode_json

log = logging.getLogger("harvester.api.accounts")

# The only account fields ever kept: the listing also carries each customer's auth_token.
SAFE_ACCOUNT_FIELDS = ("auth_id", "name", "timezone", "is_active", "enabled", "created_at")


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
