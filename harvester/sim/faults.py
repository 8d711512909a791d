"""Injectable faults: what networks, proxies and servers really do to a nightly job.

A seeded schedule decides which requests fail and how. The first faults cycle through every
kind so that even a short run sees each of them once; after that kinds are drawn at random.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import orjson
from aiohttp import web

KINDS = (
    "500",
    "502",
    "503",
    "504",
    "503-empty",
    "reset",
    "truncated",
    "html",
    "slow",
    "429-header",
    "429-body",
    "429-bare",
)


def _plivo_error(message: str) -> bytes:
    return orjson.dumps({"api_id": "sim-0000", "error": message, "message": message})


def _vobiz_error(code: str, message: str, details: dict[str, object] | None = None) -> bytes:
    return orjson.dumps(
        {
            "status": "error",
            "error": {"code": code, "message": message, "details": details or {}},
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "requestId": "req_fault",
        }
    )


class FaultInjector:
    """Decides, per request, whether to fail it and answers with that failure."""

    def __init__(self, rate: float, seed: int = 1, slow_seconds: float = 3.0) -> None:
        self.rate = rate
        self.slow_seconds = slow_seconds
        self._rng = random.Random(seed)
        self._next = 0

    def pick(self) -> str | None:
        """The fault for this request, or None to answer normally."""
        if self.rate <= 0 or self._rng.random() >= self.rate:
            return None
        if self._next < len(KINDS):
            kind = KINDS[self._next]
            self._next += 1
            return kind
        return self._rng.choice(KINDS)

    async def respond(self, kind: str, request: web.Request) -> web.StreamResponse:
        """Answer ``request`` with the fault ``kind``."""
        if kind in ("500", "502", "503", "504"):
            body = (
                _plivo_error("server error")
                if self._rng.random() < 0.5
                else _vobiz_error("INTERNAL_ERROR", "upstream failure")
            )
            return web.Response(status=int(kind), body=body, content_type="application/json")
        if kind == "503-empty":
            return web.Response(status=503)
        if kind == "html":
            html = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
            return web.Response(status=200, body=html, content_type="text/html")
        if kind == "slow":
            await asyncio.sleep(self.slow_seconds)
            return web.Response(status=503, body=_plivo_error("slow"))
        if kind.startswith("429"):
            details: dict[str, object] = {"limitType": "api"}
            headers = {}
            if kind == "429-header":
                headers["Retry-After"] = "1"
            if kind == "429-body":
                details["retryAfter"] = 1
            body = _vobiz_error("RATE_LIMIT_EXCEEDED", "Too many requests", details)
            return web.Response(status=429, body=body, headers=headers, content_type="application/json")
        # reset / truncated: promise a full body, send part of it, drop the connection.
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = 4096
        await resp.prepare(request)
        await resp.write(b'{"success": true, "data": [{"uuid": "' if kind == "truncated" else b"{")
        if request.transport is not None:
            request.transport.abort() if kind == "reset" else request.transport.close()
        return resp
