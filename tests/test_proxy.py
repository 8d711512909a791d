"""HTTP(S)_PROXY and NO_PROXY are honoured like other HTTP tools (a real forward proxy here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from harvester.api.client import env_proxy
from harvester.sim import SimConfig
from tests.conftest import PAST, all_records, assert_lake_equals, cli, dataset, sim_args, sim_env


@pytest.fixture
async def forward_proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A minimal forward proxy: requests arrive with an absolute URL and are passed on."""
    seen: list[str] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-connection")}
        async with session.get(str(request.url), headers=headers) as up:
            body = await up.read()
            keep = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "retry-after")}
            return web.Response(status=up.status, body=body, headers=keep)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await session.close()
    await runner.cleanup()


async def test_harvest_goes_through_http_proxy(start_sim, forward_proxy, tmp_path: Path) -> None:
    proxy_url, seen = forward_proxy
    sim = await start_sim(SimConfig(dataset=dataset(customers=2, days=1, calls_per_day=150, end_date=PAST)))
    env = sim_env(sim, HTTP_PROXY=proxy_url, NO_PROXY="", no_proxy="")
    code, _, err = await cli(*sim_args(sim, tmp_path / "lake"), env=env)
    assert code == 0, err
    assert_lake_equals(tmp_path / "lake", all_records(sim))
    assert any("/api/v1/partner/accounts" in u for u in seen) and any("/cdrs" in u for u in seen)
    # NO_PROXY bypasses it
    seen.clear()
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1"  # the lowercase one wins, as in curl
    code, _, err = await cli(*sim_args(sim, tmp_path / "lake2"), env=env)
    assert code == 0, err
    assert seen == []


def test_env_proxy_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert env_proxy("https://api.vobiz.ai") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    assert env_proxy("https://api.vobiz.ai") == "http://proxy.corp:3128"
    assert env_proxy("http://api.vobiz.ai") is None  # only HTTPS_PROXY is set
    monkeypatch.setenv("NO_PROXY", ".vobiz.ai")
    assert env_proxy("https://api.vobiz.ai") is None
