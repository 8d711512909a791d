"""A hostile Vobiz API for the tests: a loopback server in front of the simulator whose
answers a scenario may rewrite, replace or stretch without end; and a runner that watches the
harvester's memory (summed over its processes) while it runs.

The simulator itself is never edited: a scenario sees each request, may ask the simulator
for the honest answer (:meth:`Hostile.honest`) and answers whatever it likes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from harvester.sim import Simulator
from tests.conftest import spawn

Scenario = Callable[["Hostile", web.Request], Awaitable[web.StreamResponse | None]]


@dataclass
class Hostile:
    """Serves ``scenario``'s answers; None from it means the simulator's honest answer."""

    sim: Simulator
    scenario: Scenario
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # a scenario's own counters
    base_url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(auto_decompress=True)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.query)))
        answer = await self.scenario(self, request)
        if answer is not None:
            return answer
        status, body = await self.honest(request)
        return web.Response(status=status, body=body, content_type="application/json")

    async def honest(self, request: web.Request) -> tuple[int, bytes]:
        """The simulator's answer to the same request (path, query, credentials)."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-auth")}
        async with self._session.get(
            self.sim.base_url + request.path_qs, headers=headers, allow_redirects=False
        ) as resp:
            return resp.status, await resp.read()

    async def honest_doc(self, request: web.Request) -> dict[str, Any]:
        status, body = await self.honest(request)
        assert status == 200, body
        doc = orjson.loads(body)
        assert isinstance(doc, dict)
        return doc


def answer(doc: Any, status: int = 200, **headers: str) -> web.Response:
    try:
        body = orjson.dumps(doc)
    except TypeError:  # nested past orjson's 254 levels: the standard library writes it
        body = json.dumps(doc).encode()
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def is_page(request: web.Request, customer: str | None = None) -> bool:
    """A CDR list request (of ``customer``, when named) that is not a 1-record probe."""
    parts = request.path.split("/")
    if not request.path.endswith("/cdrs") or request.query.get("per_page") == "1":
        return False
    return customer is None or (len(parts) > 5 and parts[5] == customer)


@dataclass
class Watched:
    code: int
    out: str
    err: str
    peak_mb: float


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in KB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


async def run_watched(
    *args: str, env: dict[str, str] | None = None, limit_mb: float = 600, timeout: float = 120
) -> Watched:
    """``python -m harvester ARGS`` with its memory (all its processes) sampled every 20 ms;
    past ``limit_mb`` it is killed (the test then fails on ``peak_mb``)."""
    proc = await spawn(*args, env=env, start_new_session=True)  # its own group, killed alone
    peak = 0
    deadline = time.monotonic() + timeout

    async def sample() -> None:
        nonlocal peak
        while proc.returncode is None:
            peak = max(peak, _tree_rss_kb(proc.pid))
            if peak > limit_mb * 1024 or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
                return
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    out, err = await proc.communicate()
    await sampler
    assert proc.returncode is not None
    return Watched(proc.returncode, out.decode(), err.decode(), peak / 1024)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}
