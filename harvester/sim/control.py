"""The simulator's control routes for tests and benchmarks (``/_sim/...``: stats, freeze,
release held answers, add a late record) and its drift: calls that keep completing on the
current UTC day while it is not frozen."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from harvester.sim.server import Simulator


def control_routes(sim: Simulator) -> list[web.RouteDef]:
    async def stats(request: web.Request) -> web.Response:
        body = {
            "stats": dict(sim.stats),
            "shard_requests": {f"{a}|{d}": n for (a, d), n in sim.shard_requests.items()},
        }
        return web.json_response(body)

    async def freeze(request: web.Request) -> web.Response:
        sim.freeze()
        return web.json_response({"frozen": True})

    async def release(request: web.Request) -> web.Response:
        sim.released.set()
        return web.json_response({"released": True})

    async def late(request: web.Request) -> web.Response:
        q = request.query
        rec = sim.data.add_late_record(q["account"], dt.date.fromisoformat(q["date"]))
        return web.json_response({"uuid": rec["uuid"]})

    return [
        web.get("/_sim/stats", stats),
        web.post("/_sim/freeze", freeze),
        web.post("/_sim/release", release),
        web.post("/_sim/late", late),
    ]


async def drift(sim: Simulator) -> None:
    """While not frozen, calls keep completing on the current UTC day."""
    owed = 0.0
    tick = 0.02
    i = 0
    while not sim.frozen:
        await asyncio.sleep(tick)
        owed += sim.config.drift_per_second * tick
        today = dt.datetime.now(dt.UTC).date()
        while owed >= 1 and sim.data.customer_list:
            owed -= 1
            cust = sim.data.customer_list[i % len(sim.data.customer_list)]
            i += 1
            sim.data.add_late_record(cust.auth_id, today, when=time.time() - 1)
            sim.stats["drift_records"] += 1
