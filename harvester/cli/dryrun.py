"""``harvest --dry-run``: what a run would do, and what it would cost, without writing."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import orjson

from harvester.config import HarvestConfig
from harvester.harvest import loop
from harvester.harvest.engine import Harvester
from harvester.harvest.fetch import at_once
from harvester.harvest.run import client_for
from harvester.lake.lake import Lake
from harvester.records.decode import Page


async def plan_only(cfg: HarvestConfig, probe: bool) -> dict[str, Any]:
    """Discover accounts, plan shards against any existing manifest, optionally probe."""
    client = client_for(cfg)
    async with client:
        # The lake is only read (its manifest), never opened, locked or written.
        h = Harvester(cfg, client, Lake(cfg.out, cfg.s3_endpoint_url, cfg.s3_region))
        planned = await h.plan()
        accounts = sorted({p.shard.account for p in planned if p.shard.account})
        await h.learn_window(planned, record=False)
        modes = Counter(p.mode for p in planned)
        requests = modes["harvest"] + modes["recheck"]
        records = None
        if probe:
            todo = iter([p.shard for p in planned if p.mode == "harvest"])
            firsts: list[Page] = []

            async def lane() -> None:
                for shard in todo:
                    firsts.append(await h.fetcher.pages.page(shard, 1, cfg.per_page))

            await at_once(lane() for _ in range(cfg.concurrency))
            requests = sum(max(1, p.pages) for p in firsts) + modes["recheck"]
            records = sum(p.total for p in firsts)
    rate = cfg.rate if isinstance(cfg.rate, float) else None
    return {
        "dry_run": True,
        "scope": cfg.scope,
        "customers": accounts,
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
