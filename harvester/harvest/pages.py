"""Pages of a shard, one request each: decoded by a decode worker when there are workers
(else here), or only their numbers (a probe, a re-check); every page counted."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from harvester.api.client import Client
from harvester.api.endpoints import list_params, list_path
from harvester.config import HarvestConfig
from harvester.errors import DecodeError
from harvester.harvest.pool import DecodePool
from harvester.records.decode import Page, check_shape, decode_numbers, decode_page
from harvester.records.shard import Shard

log = logging.getLogger("harvester.harvest.pages")
T = TypeVar("T")


@dataclass
class Counts:
    """What fetching has done so far (the progress bar and the report read these)."""

    pages: int = 0
    fetched: int = 0  # records received in pages, before dedupe
    worker_pages: int = 0  # pages decoded by the decode workers
    problems: list[str] = field(default_factory=list)


class PageSource:
    """The pages of one run's shards (one client, an optional decode pool)."""

    def __init__(self, cfg: HarvestConfig, client: Client, pool: DecodePool | None) -> None:
        self.cfg, self.client, self.pool = cfg, client, pool
        self.counts = Counts()
        self.end_offset = 0  # 1 when the server reads end_date as exclusive (harvest.window)

    async def _get(self, shard: Shard, n: int, per_page: int, decode: Callable[[bytes], T]) -> T:
        params = list_params(shard.day, self.cfg.filters, n, per_page, self.end_offset)
        path = list_path(shard.scope, shard.account)
        return await self.client.get(path, params, decode, f"shard {shard.key} page {n}")

    async def body(self, shard: Shard, n: int, per_page: int) -> bytes:
        """Page ``n``'s body, for a decode worker (checked to be a JSON object at all)."""
        return await self._get(shard, n, per_page, check_shape)

    async def page(self, shard: Shard, n: int, per_page: int) -> Page:
        """Page ``n`` of a shard (see :meth:`page_and_body`)."""
        return (await self.page_and_body(shard, n, per_page))[0]

    async def page_and_body(self, shard: Shard, n: int, per_page: int) -> tuple[Page, bytes | None]:
        """Page ``n`` of a shard, decoded by a worker when there are workers (then with its
        body); a body a worker cannot decode is fetched again and decoded here (with the
        client's retries)."""
        if self.pool is not None and not self.pool.broken:
            body = await self._get(shard, n, per_page, check_shape)
            try:
                page = await self.pool.decode(body, n, per_page)
            except DecodeError as e:
                log.info("shard %s page %d: %s; fetching it again", shard.key, n, e)
            else:
                self.count(page, in_worker=True)
                return page, body
        page = await self._get(shard, n, per_page, lambda body: decode_page(body, n, per_page))
        self.count(page, in_worker=False)
        return page, None

    def count(self, page: Page, in_worker: bool) -> None:
        self.counts.pages += 1
        self.counts.fetched += page.rows
        self.counts.worker_pages += in_worker

    async def total(self, shard: Shard, start: dt.date, end: dt.date) -> int:
        """The API's total for ``shard``'s query over ``start``..``end`` (one record asked)."""
        params = list_params(start, self.cfg.filters, 1, 1, (end - start).days)
        what = f"shard {shard.key} day-window probe {start}..{end}"
        path = list_path(shard.scope, shard.account)
        return (await self.client.get(path, params, lambda b: decode_numbers(b, 1, 1), what)).total

    async def numbers(self, shard: Shard) -> Page:
        """Page 1's numbers only (a re-check compares them with the manifest)."""
        page = await self._get(shard, 1, self.cfg.per_page, lambda b: decode_numbers(b, 1, self.cfg.per_page))
        self.counts.pages += 1
        return page
