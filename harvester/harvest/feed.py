"""Whether a partner-wide run reads its days through the partner feed.

The global feed (``GET /partner/cdrs``) returns a day of every customer in
``ceil(total / per_page)`` pages; one customer at a time costs at least one request per
customer and day, and never fewer pages in all (a ceiling of a sum is at most the sum of the
ceilings). So the feed is the fewest requests the API allows, whenever its records can be
attributed: each must name (``account_id``) a customer of the listing. ``--fetch auto``
checks that on the newest day's first page before planning, and every feed shard checks it
on all its rows before it is committed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping

from harvester.config import HarvestConfig
from harvester.harvest.pages import PageSource
from harvester.harvest.plan import span_of
from harvester.records.shard import Shard

log = logging.getLogger("harvester.harvest.feed")
PROBE_DAYS = 3  # closed days whose first feed page is read until one has records
UNATTRIBUTABLE = "unattributable"  # the server fact kept when the feed names strangers


def wanted(cfg: HarvestConfig) -> bool:
    """Whether this run may read the feed at all (partner scope, every customer)."""
    return cfg.scope == "partner" and not cfg.customers and cfg.fetch != "per-customer"


def strangers(accounts: Iterable[str | None], known: set[str]) -> list[str]:
    """Values of ``account_id`` that name no customer of the listing (None: a record without one)."""
    return sorted(str(a) for a in accounts if a is None or a not in known)


async def choose(
    cfg: HarvestConfig, pages: PageSource, known: set[str], prior: Mapping[str, object], fact: object
) -> tuple[bool, str]:
    """(whether the run reads the feed, why not when it was wanted). ``prior`` are the
    planned days' records, ``fact`` what the lake remembers of the feed."""
    if cfg.fetch == "global":
        return True, ""
    held = {key.split("/")[0] for key in prior}
    new = [day for day in span_of(cfg) if day.isoformat() not in held]
    if not new:
        return True, ""  # no new day: each keeps the way it was read (see harvest.plan)
    if fact == UNATTRIBUTABLE:
        return False, "an earlier run found records of the feed that name no customer"
    return await attributable(cfg, pages, known, new)


async def attributable(
    cfg: HarvestConfig, pages: PageSource, known: set[str], new: list[dt.date]
) -> tuple[bool, str]:
    """(whether the feed's records name the listing's customers, why not). Reads page 1 of
    the feed for the newest closed ``new`` days (none committed yet), until one has records."""
    span = sorted(new, reverse=True)
    closed = [d for d in span if d < cfg.today] or span
    for day in closed[:PROBE_DAYS]:
        page = await pages.page(Shard(day, "global", None), 1, cfg.per_page)
        if page.rows:
            odd = strangers(page.part.values("account_id"), known)
            if odd:
                return False, f"its records of {day} name {_named(odd)}, not in the listing"
            return True, ""
    return True, ""  # no records to attribute on the newest days: the feed costs the least


def _named(odd: list[str]) -> str:
    shown = ", ".join(repr(a[:40]) for a in odd[:3])
    return f"account {shown}" + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")


def unattributed_error(day: dt.date, odd: list[str]) -> str:
    return (
        f"the partner feed's records of {day} name {_named(odd)}, not in the listing: they "
        "cannot be attributed to a customer (the next run reads customers one at a time; "
        "or pass --fetch per-customer)"
    )
