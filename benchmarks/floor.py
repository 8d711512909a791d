"""The floor: the harvester's own parts with none of its bookkeeping.

Usage: python -m benchmarks.floor BASE_URL AUTH_ID TOKEN START END OUT
Prints one JSON line: {"records", "pages", "elapsed_s"}.

aiohttp with 16 requests in flight, page 1 of each (customer, day) then the rest at once,
``decode_page`` on the event loop, one Parquet file per shard written the harvester's way
(same encodings, in memory, fsync + rename + directory fsync). Nothing else: no retries, rate
limit, verification, manifest, lock, day-window probe or decode workers. Its CPU per record
is what this machine charges for HTTP + orjson + Arrow + Parquet, so the harvester's distance
from it is the price of its bookkeeping, and a target below it is out of reach here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from harvester.harvest.loop import run
from harvester.lake.local import LocalStore
from harvester.records.assemble import dedupe, order
from harvester.records.decode import Collector, Page, decode_page
from harvester.records.encoding import parquet_bytes


async def _harvest(base: str, headers: dict[str, str], days: list[str], out: Path) -> tuple[int, int]:
    store = LocalStore(out)
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(base, connector=connector, headers=headers) as s:
        async with s.get("/api/v1/partner/accounts", params={"per_page": "100"}) as r:
            accounts = [a["auth_id"] for a in orjson.loads(await r.read())["accounts"]]
        records = pages = 0
        shards = asyncio.Semaphore(20)

        async def page(account: str, day: str, n: int) -> Page:
            params = {"start_date": day, "end_date": day, "page": str(n), "per_page": "100"}
            async with s.get(f"/api/v1/partner/accounts/{account}/cdrs", params=params) as r:
                r.raise_for_status()
                return decode_page(await r.read(), n, 100)

        async def shard(account: str, day: str) -> None:
            nonlocal records, pages
            async with shards:
                first = await page(account, day, 1)
                got = Collector()
                got.add(first)
                for p in await asyncio.gather(*(page(account, day, n) for n in range(2, first.pages + 1))):
                    got.add(p)
                table = order(dedupe(got.table()))
                if table.num_rows:
                    data = parquet_bytes(table)
                    store.write(f"date={day}/cdr-{account}.parquet", data)
                records += table.num_rows
                pages += got.pages

        await asyncio.gather(*(shard(a, d) for a in accounts for d in days))
    return records, pages


def main() -> int:
    base, auth_id, token, start, end, out = sys.argv[1:7]
    t0 = time.perf_counter()  # like the harvester's own clock: from the start of the run
    d0, d1 = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    days = [(d0 + dt.timedelta(days=i)).isoformat() for i in range((d1 - d0).days + 1)]
    Path(out).mkdir(parents=True, exist_ok=True)
    headers = {"X-Auth-ID": auth_id, "X-Auth-Token": token}
    records, pages = run(_harvest(base, headers, days, Path(out)))
    print(json.dumps({"records": records, "pages": pages, "elapsed_s": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
