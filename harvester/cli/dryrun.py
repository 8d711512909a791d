"""``harvest --dry-run``: what a run would do, and what it would cost, without writing."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import orjson

from harvester.config import HarvestConfig
from harvester.harvest import feed, loop
from harvester.harvest.engine import Harvester
from harvester.harvest.fetch import at_once
from harvester.harvest.plan import Planned
from harvester.harvest.run import client_for
from harvester.lake.lake import Lake
from harvester.records.decode import Page


async def _cost(h: Harvester, planned: list[Planned], probe: bool) -> dict[str, Any]:
    """Requests (and, probed, records) of a plan: page 1 of each shard to harvest tells its
    pages; without a probe, one request a shard is the least it costs."""
    harvest = [p.shard for p in planned if p.mode == "harvest"]
    rechecks = sum(1 for p in planned if p.mode == "recheck")
    if not probe:
        return {"requests": len(harvest) + rechecks, "records": None}
    todo = iter(harvest)
    firsts: list[Page] = []

    async def lane() -> None:
        for shard in todo:
            firsts.append(await h.fetcher.pages.page(shard, 1, h.cfg.per_page))

    await at_once(lane() for _ in range(h.cfg.concurrency))
    return {
        "requests": sum(max(1, p.pages) for p in firsts) + rechecks,
        "records": sum(p.total for p in firsts),
    }


async def plan_only(cfg: HarvestConfig, probe: bool) -> dict[str, Any]:
    """Discover accounts, plan shards against any existing manifest, optionally probe. In
    partner scope, both ways of reading the days are costed (the partner feed and customer
    by customer), and the one the run would take is named."""
    client = client_for(cfg)
    async with client:
        # The lake is only read (its manifest), never opened, locked or written.
        h = Harvester(cfg, client, Lake(cfg.out, cfg.s3_endpoint_url, cfg.s3_region))
        await h.prepare()
        planned = list(h.planned())
        await h.learn_window(record=False)
        modes = Counter(p.mode for p in planned)
        ways = {"run": "global" if any(p.shard.scope == "global" for p in planned) else "per-customer"}
        if feed.wanted(cfg):
            for way, use_feed in (("global", True), ("per-customer", False)):
                shards = list(h.planned(use_feed))
                ways[way] = await _cost(h, shards, probe)  # type: ignore[assignment]
        cost = await _cost(h, planned, probe)
    rate = cfg.rate if isinstance(cfg.rate, float) else None
    requests, records = cost["requests"], cost["records"]
    return {
        "dry_run": True,
        "scope": cfg.scope,
        "customers": sorted(h.known),
        "fetch": ways,
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
        *_ways(plan),
        ("time", when),
        ("lake", plan["lake"] + " (nothing written)"),
    ]
    return "Dry run: the plan\n" + "\n".join(f"  {k:<10} {v}" for k, v in rows)


def _ways(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """Both ways of reading a partner's days, and which one runs."""
    ways = plan["fetch"]
    rows = []
    for way in ("global", "per-customer"):
        if way in ways:
            mark = "  <- this run" if ways["run"] == way else ""
            exact = "" if plan["requests_exact"] else "at least "
            rows.append((f"  {way}", f"{exact}{ways[way]['requests']:,} requests{mark}"))
    return rows


def dry_run(cfg: HarvestConfig, probe: bool, as_json: bool) -> int:
    plan = loop.run(plan_only(cfg, probe))
    if as_json:
        print(orjson.dumps(plan).decode())
    else:
        print(render(plan), file=sys.stdout)
    return 0
