"""``harvest --dry-run``: what a run would do, and what it would cost, without writing."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any

import orjson

from harvester import loop
from harvester.client import Client, RetryPolicy
from harvester.config import HarvestConfig
from harvester.engine import Harvester
from harvester.lake import Lake
from harvester.ratelimit import make_pacer


async def plan_only(cfg: HarvestConfig, probe: bool) -> dict[str, Any]:
    """Discover accounts, plan shards against any existing manifest, optionally probe."""
    client = Client(
        cfg.base_url,
        cfg.auth_id,
        cfg.auth_token,
        make_pacer(cfg.rate),
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        connect_timeout=cfg.connect_timeout,
        policy=RetryPolicy(retries=cfg.retries),
    )
    async with client:
        h = Harvester(
            cfg, client, Lake(cfg.out, cfg.s3_endpoint_url, cfg.s3_region)
        )  # the lake is only read (manifest), never opened
        accounts = await h.accounts()
        planned = h.plan(accounts)
        await h.day_window(planned, record=False)
        modes = Counter(mode for _, mode in planned)
        requests = modes["harvest"] + modes["recheck"]
        records = None
        if probe:
            todo = [s for s, mode in planned if mode == "harvest"]
            firsts = await asyncio.gather(*(h.page(s, 1, cfg.per_page) for s in todo))
            requests = sum(max(1, p.pages) for p in firsts) + modes["recheck"]
            records = sum(p.total for p in firsts)
    rate = cfg.rate if isinstance(cfg.rate, float) else None
    return {
        "dry_run": True,
        "scope": cfg.scope,
        "customers": [a for a in accounts if a],
        "start_date": cfg.start_date.isoformat(),
        "end_date": cfg.end_date.isoformat(),
        "days": (cfg.end_date - cfg.start_date).days + 1,
        "lookback": cfg.lookback,
        "shards": {
            "total": len(planned),
            "harvest": modes["harvest"],
            "recheck": modes["recheck"],
            "skip": modes["skip"],
        },
        "requests": requests,
        "requests_exact": probe,
        "records": records,
        "requests_made": client.stats.requests,
        "rate": "auto" if cfg.rate == "auto" else ("unlimited" if rate is None else rate),
        "seconds_at_rate": round(requests / rate, 1) if rate else None,
        "lake": str(cfg.out),
    }


def render(plan: dict[str, Any]) -> str:
    s = plan["shards"]
    custs = plan["customers"]
    shown = ", ".join(custs[:5]) + (f", … (+{len(custs) - 5})" if len(custs) > 5 else "")
    req = (
        f"{plan['requests']:,}"
        if plan["requests_exact"]
        else f"at least {plan['requests']:,} (--probe counts them)"
    )
    if plan["seconds_at_rate"] is not None:
        when = f"about {plan['seconds_at_rate']:,.0f} s at {plan['rate']} requests/s"
    elif plan["rate"] == "auto":
        when = "depends on the limit --rate auto finds (it starts at 5 requests/s)"
    else:
        when = "as fast as the server answers (--rate unlimited)"
    rows = [
        ("scope", plan["scope"]),
        ("customers", f"{len(custs)}" + (f": {shown}" if custs else "")),
        (
            "days",
            f"{plan['start_date']} .. {plan['end_date']} ({plan['days']} days, lookback {plan['lookback']})",
        ),
        (
            "shards",
            f"{s['total']}: {s['harvest']} to harvest, {s['recheck']} to re-check, "
            f"{s['skip']} already complete",
        ),
        ("requests", req + ("" if plan["records"] is None else f", {plan['records']:,} records")),
        ("time", when),
        ("lake", plan["lake"] + " (nothing written)"),
    ]
    return "Dry run: the plan\n" + "\n".join(f"  {k:<10} {v}" for k, v in rows)


def dry_run(cfg: HarvestConfig, probe: bool, as_json: bool) -> int:
    plan = loop.run(plan_only(cfg, probe))
    if as_json:
        print(orjson.dumps(plan).decode())
    else:
        print(render(plan), file=sys.stdout)
    return 0
