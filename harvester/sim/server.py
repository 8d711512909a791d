"""An aiohttp server that behaves like the Vobiz CDR API, for demos, tests and benchmarks.

Routes (all ``GET``; auth with ``X-Auth-ID`` / ``X-Auth-Token``):

* ``/api/v1/partner/accounts``                         partner's customers (page + per_page|size)
* ``/api/v1/partner/accounts/{customer}/cdrs``         one customer's CDRs
* ``/api/v1/partner/accounts/{customer}/cdrs/{uuid}``  one CDR, bare object
* ``/api/v1/partner/cdrs``                             global feed, all customers
* ``/api/v1/Account/{auth_id}/cdr``                    account-level CDRs (customer credentials)
* ``/api/v1/Account/{auth_id}/cdr/{uuid}``             one CDR as ``{data, success}``

Control routes for tests and benchmarks live under ``/_sim/`` (stats, freeze, late records).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import ssl
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from harvester.sim.control import control_routes, drift
from harvester.sim.data import Dataset, Record
from harvester.sim.faults import FaultInjector
from harvester.sim.queries import (
    FILTERS,
    ApiError,
    TokenBucket,
    apply_filters,
    error_body,
    page_body,
    parse_date,
    parse_int,
    summarize,
)

API = "/api/v1"
MAX_PER_PAGE = 100


@dataclass
class SimConfig:
    """How the simulated API behaves (data set, credentials, limits, latency, faults)."""

    dataset: Dataset = field(default_factory=Dataset)
    auth_id: str = "PA_SIMULATOR"
    auth_token: str = "sim-partner-token"
    rate_limit: float | None = None  # requests/s per credential; None = unlimited
    burst: int | None = None  # token-bucket size; default max(2, rate/5)
    latency_ms: float = 0.0
    max_per_page: int = MAX_PER_PAGE  # the server may grant fewer per page than asked
    fault_rate: float = 0.0
    fault_seed: int = 1
    hold_after: int | None = None  # after N CDR requests, hold every answer until released
    drift_per_second: float = 0.0  # new calls per second on the current UTC day
    slow_seconds: float = 3.0  # how long a "slow" fault holds its answer
    can_view_cdrs: bool = True  # the partner capability flag; False answers CDR calls with 403
    end_exclusive: bool = False  # read end_date as exclusive (a server the docs do not rule out)
    page_cache_mb: int = 256  # rendered pages kept, so benchmarks measure the client, not us
    feed_names_customers: bool = True  # False: the global feed's records carry the partner's id


class Simulator:
    """The simulated API: an aiohttp application plus its state and counters."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.data = self.config.dataset
        self.stats: Counter[str] = Counter()
        self.shard_requests: Counter[tuple[str, str]] = Counter()
        self.faults = FaultInjector(self.config.fault_rate, self.config.fault_seed, self.config.slow_seconds)
        self._buckets: dict[str, TokenBucket] = {}
        self._filtered: OrderedDict[tuple[Any, ...], tuple[list[Record], dict[str, Any]]] = OrderedDict()
        self._pages: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._page_bytes = 0
        self.released = asyncio.Event()
        self.frozen = self.config.drift_per_second <= 0
        self._drift_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get(f"{API}/partner/accounts", self._accounts)
        r.add_get(f"{API}/partner/accounts/{{customer}}/cdrs", self._list)
        r.add_get(f"{API}/partner/accounts/{{customer}}/cdrs/{{uuid}}", self._one)
        r.add_get(f"{API}/partner/cdrs", self._list)
        r.add_get(f"{API}/Account/{{auth_id}}/cdr", self._list)
        r.add_get(f"{API}/Account/{{auth_id}}/cdr/{{uuid}}", self._one)
        app.add_routes(control_routes(self))
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0 picks a free port), over TLS with ``ssl_context``;
        returns the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024, ssl_context=ssl_context)
        await site.start()
        bound = self._runner.addresses[0][1] if self._runner.addresses else port
        self.base_url = f"{'https' if ssl_context else 'http'}://{host}:{bound}"
        if not self.frozen:
            self._drift_task = asyncio.create_task(drift(self))
        return self.base_url

    async def stop(self) -> None:
        self.released.set()
        if self._drift_task:
            self._drift_task.cancel()
        if self._runner:
            await self._runner.cleanup()

    def freeze(self) -> None:
        """Stop the drift: from now on every day is stable."""
        self.frozen = True

    # -- request plumbing ----------------------------------------------------------------
    def _admit(self, request: web.Request, account: str | None = None) -> None:
        """Check credentials (``account``: customer credentials for that account), then take
        a token of that credential's rate limit."""
        aid = request.headers.get("X-Auth-ID", "")
        tok = request.headers.get("X-Auth-Token", "")
        if account is None:
            ok = aid == self.config.auth_id and tok == self.config.auth_token
        else:
            cust = self.data.by_id.get(account)
            ok = cust is not None and aid == account and tok == cust.auth_token
        if not ok:
            raise ApiError(401, "INVALID_CREDENTIALS", "Invalid or missing X-Auth-ID / X-Auth-Token")
        if account is None and not self.config.can_view_cdrs and "cdrs" in request.path:
            raise ApiError(403, "PERMISSION_DENIED", "partner capability can_view_cdrs is false")
        rate = self.config.rate_limit
        if not rate:
            return
        bucket = self._buckets.get(aid)
        if bucket is None:
            size = self.config.burst or max(2, int(rate / 5))
            bucket = self._buckets[aid] = TokenBucket(rate, size)
        wait = bucket.take()
        if wait:
            self.stats["429"] += 1
            retry = max(1, math.ceil(wait))
            raise ApiError(
                429, "RATE_LIMIT_EXCEEDED", "Too many requests", limitType="api", limit=rate, retryAfter=retry
            )

    async def _serve(self, request: web.Request, account: str | None, build: Any) -> web.StreamResponse:
        """Common path: count, auth, rate limit, latency, faults, then ``build()``."""
        self.stats["requests"] += 1
        n = self.stats["requests"]
        try:
            self._admit(request, account)
            if self.config.hold_after is not None and n > self.config.hold_after:
                self.stats["held"] += 1
                await self.released.wait()
            if self.config.latency_ms:
                await asyncio.sleep(self.config.latency_ms / 1000)
            fault = self.faults.pick()
            if fault is not None:
                self.stats[f"fault:{fault}"] += 1
                return await self.faults.respond(fault, request)
            body = build()
        except ApiError as e:
            self.stats[f"status:{e.status}"] += 1
            headers = {}
            if e.status == 429:
                headers["Retry-After"] = str(e.details.get("retryAfter", 1))
            return web.Response(
                status=e.status,
                body=error_body(e.code, e.message, e.details),
                content_type="application/json",
                headers=headers,
            )
        self.stats["status:200"] += 1
        return web.Response(body=body, content_type="application/json")

    # -- CDR lists -----------------------------------------------------------------------
    def _select(
        self, auth_ids: list[str], filters: dict[str, str], require_pair: bool
    ) -> tuple[list[Record], dict[str, Any]]:
        """The filtered set, newest first, and its summary (cached per query)."""
        key = (tuple(auth_ids), tuple(sorted(filters.items())), self.data.version)
        hit = self._filtered.get(key)
        if hit is not None:
            self._filtered.move_to_end(key)
            return hit
        start = filters.get("start_date")
        end = filters.get("end_date")
        if require_pair and bool(start) != bool(end):
            raise ApiError(400, "VALIDATION_ERROR", "start_date and end_date are required together")
        days = list(self.data.day_list)
        today = dt.datetime.now(dt.UTC).date()
        if not self.frozen and today not in days:
            days.append(today)
        if start:
            d0 = parse_date(start, "start_date")
            days = [d for d in days if d >= d0]
        if end:
            d1 = parse_date(end, "end_date")
            days = [d for d in days if (d < d1 if self.config.end_exclusive else d <= d1)]
            if start and d1 < parse_date(start, "start_date"):
                raise ApiError(400, "VALIDATION_ERROR", "end_date is before start_date")
        recs = self.data.records(auth_ids, days)
        recs = apply_filters(recs, filters)
        out = (recs, summarize(recs))
        self._filtered[key] = out
        if len(self._filtered) > 256:
            self._filtered.popitem(last=False)
        return out

    def _page(self, request: web.Request, auth_ids: list[str], envelope: dict[str, Any], pair: bool) -> bytes:
        q = request.query
        filters = {k: q[k] for k in FILTERS if q.get(k, "") != ""}
        page = parse_int(q.get("page", "1"), "page", 1)
        per_page = min(parse_int(q.get("per_page", "20"), "per_page", 1), self.config.max_per_page)
        shard = auth_ids[0] if len(auth_ids) == 1 else "global"
        self.shard_requests[(shard, filters.get("start_date", ""))] += 1
        key = (request.path, tuple(sorted(filters.items())), page, per_page, self.data.version)
        cached = self._pages.get(key)
        if cached is not None:
            return cached
        recs, summary = self._select(auth_ids, filters, pair)
        if shard == "global" and not self.config.feed_names_customers:
            recs = [{**r, "account_id": self.config.auth_id} for r in recs]
        body = page_body(recs, summary, page, per_page, envelope)
        self._pages[key] = body
        self._page_bytes += len(body)
        while self._page_bytes > self.config.page_cache_mb * 2**20 and self._pages:
            _, old = self._pages.popitem(last=False)
            self._page_bytes -= len(old)
        return body

    def _customer(self, request: web.Request) -> str:
        cust = request.match_info["customer"]
        if cust not in self.data.by_id:
            raise ApiError(404, "ACCOUNT_NOT_FOUND", f"customer {cust} not found under this partner")
        return cust

    async def _list(self, request: web.Request) -> web.StreamResponse:
        """A CDR list: one customer's (partner), the global feed, or an account's own."""
        account = request.match_info.get("auth_id")

        def build() -> bytes:
            if account is not None:
                return self._page(request, [account], {"account_id": account}, pair=True)
            if "customer" in request.match_info:
                cust = self._customer(request)
                return self._page(request, [cust], {"account_id": cust, "account_auth_id": cust}, pair=False)
            ids = [c.auth_id for c in self.data.customer_list]
            env = {"account_id": self.config.auth_id, "account_auth_id": self.config.auth_id}
            return self._page(request, ids, env, pair=False)

        return await self._serve(request, account, build)

    def _find(self, account: str, uuid: str) -> Record:
        for rec in self.data.records([account], self.data.day_list):
            if rec["uuid"] == uuid:
                return rec
        for recs in self.data.extra.values():
            for rec in recs:
                if rec["uuid"] == uuid and rec["account_id"] == account:
                    return rec
        raise ApiError(404, "CDR_NOT_FOUND", f"no CDR with uuid {uuid}")

    async def _one(self, request: web.Request) -> web.StreamResponse:
        """One CDR by uuid: the bare object (partner), or ``{data, success}`` (account)."""
        account = request.match_info.get("auth_id")

        def build() -> bytes:
            if account is None:
                return orjson.dumps(self._find(self._customer(request), request.match_info["uuid"]))
            return orjson.dumps({"data": self._find(account, request.match_info["uuid"]), "success": True})

        return await self._serve(request, account, build)

    # -- accounts ------------------------------------------------------------------------
    async def _accounts(self, request: web.Request) -> web.StreamResponse:
        def build() -> bytes:
            q = request.query
            page = parse_int(q.get("page", "1"), "page", 1)
            size = parse_int(q.get("per_page", q.get("size", "20")), "per_page", 1)
            size = min(size, 100)
            custs = self.data.customer_list
            search = q.get("search", "").lower()
            if search:
                custs = [c for c in custs if search in c.name.lower()]
            chunk = custs[(page - 1) * size : page * size]
            return orjson.dumps(
                {
                    "accounts": [c.public() for c in chunk],
                    "total": len(custs),
                    "page": page,
                    "size": size,
                }
            )

        return await self._serve(request, None, build)
