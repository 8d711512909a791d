"""An S3 API on loopback for the tests: moto's server, and a fault-injecting proxy before it.

The proxy forwards every request to moto unchanged, except the ones its schedule picks:
those get a ``503 SlowDown`` (the S3 error body) or a connection reset, like a busy bucket
does. ``fail_puts_matching`` makes every PUT of a matching key fail, to test a storage
failure that outlasts the retries.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)
_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class FaultyS3Proxy:
    """A reverse proxy to an S3 endpoint that injects 503 SlowDown and resets."""

    def __init__(self, upstream: str, rate: float = 0.0, seed: int = 1) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.rng = random.Random(seed)
        self.fail_puts_matching: str | None = None
        self.stats: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # body bytes answered to GETs, by key
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._kinds = ["slowdown", "reset"]

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    def _pick(self, request: web.Request) -> str | None:
        if self.fail_puts_matching and request.method == "PUT" and self.fail_puts_matching in request.path:
            return "slowdown"
        if self.rate and self.rng.random() < self.rate:
            kind = self._kinds[self.stats["faults"] % len(self._kinds)]
            self.stats["faults"] += 1
            return kind
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        body = await request.read()
        fault = self._pick(request)
        if fault == "slowdown":
            self.stats["slowdown"] += 1
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        if fault == "reset":
            self.stats["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.headers.get("Host", "")
        async with self._session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers, data=body
        ) as up:
            data = await up.read()
            if request.method == "GET":
                self.served[request.path] += len(data)
            out_headers: dict[str, Any] = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":  # no body, but the object's size must come through
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                resp.content_length = int(up.headers.get("Content-Length", "0"))
                await resp.prepare(request)
                return resp
            return web.Response(status=up.status, body=data, headers=out_headers)
