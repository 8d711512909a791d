"""One harvest run from a config to a report: wires client, lake and engine together,
turns errors into exit codes, and stops cleanly on a deadline, SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from harvester.api.client import Client, RetryPolicy
from harvester.api.pacing import AutoRate, Pacer, RedisPacer, SharedAutoRate, make_pacer
from harvester.config import HarvestConfig, validate
from harvester.errors import HarvestError
from harvester.harvest import loop, report
from harvester.harvest.engine import Harvester
from harvester.harvest.pool import DecodePool
from harvester.lake.lake import Lake
from harvester.logs import JOURNAL

log = logging.getLogger("harvester.harvest.run")


def client_for(cfg: HarvestConfig, learned_rate: float | None = None) -> Client:
    """The API client a run with these settings uses (not yet opened); ``--rate auto`` starts
    under ``learned_rate`` when an earlier run into the lake found the server's limit."""
    pacer = make_pacer(cfg.rate, learned_rate, cfg.rate_store, cfg.auth_id)
    return Client(
        cfg.base_url,
        cfg.auth_id,
        cfg.auth_token,
        pacer,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        connect_timeout=cfg.connect_timeout,
        policy=RetryPolicy(retries=cfg.retries),
        max_body=cfg.max_body_mb << 20,
    )


Report = dict[str, Any]
"""A run's facts with stable keys (the ``--json`` object; documented in the README)."""


def run_harvest(cfg: HarvestConfig, progress: Callable[[Harvester], Any] | None = None) -> Report:
    """Run one harvest from synchronous code (a script, a notebook, an Airflow task): the
    decode workers start first where the rate calls for them from the start, then the event
    loop runs the harvest. Returns the report; its ``exit_code`` is what the command line
    exits with. Settings the command line would refuse raise :class:`UsageError` first."""
    cfg = validate(cfg, yes=True)
    workers = cfg.workers_at(starting_rate(cfg))
    pool = DecodePool(workers) if workers else None
    try:
        return loop.run(_harvest(cfg, progress, pool))
    finally:
        if pool is not None:
            pool.close()


async def harvest_async(
    cfg: HarvestConfig,
    progress: Callable[[Harvester], Any] | None = None,
    pool: DecodePool | None = None,
) -> Report:
    """Run one harvest inside a running event loop. Without ``pool``, one is started here
    (from a thread, so the loop keeps running) when ``cfg`` asks for decode workers from the
    start, and stopped when the harvest ends; a run that starts slow (``--rate auto``) starts
    them once its requests come fast enough (see :meth:`Harvester._workers_if_busy`)."""
    cfg = validate(cfg, yes=True)  # a caller's settings are checked as the command line's are
    workers = cfg.workers_at(starting_rate(cfg)) if pool is None else 0
    own_pool = workers > 0
    if own_pool:
        pool = await asyncio.get_running_loop().run_in_executor(None, DecodePool, workers)
    try:
        return await _harvest(cfg, progress, pool)
    finally:
        if own_pool and pool is not None:
            pool.close()


async def _harvest(
    cfg: HarvestConfig, progress: Callable[[Harvester], Any] | None, pool: DecodePool | None
) -> Report:
    lake = Lake(cfg.out, cfg.s3_endpoint_url, cfg.s3_region)
    lake.check_usable()
    client = client_for(cfg, _learned_rate(lake) if cfg.rate == "auto" else None)
    pacer = client.pacer
    harvester = Harvester(cfg, client, lake, pool)
    error: HarvestError | None = None
    task = asyncio.current_task()
    stop_reason: list[str] = []

    def stop(why: str) -> None:
        if not stop_reason:
            stop_reason.append(why)
            if task is not None:
                task.cancel()

    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop, signal.Signals(sig).name)
            handled.append(sig)
    deadline = loop.call_later(cfg.max_runtime, stop, "--max-runtime reached") if cfg.max_runtime else None
    started = time.monotonic()
    JOURNAL.info(
        "run start: scope %s, days %s..%s, lake %s", cfg.scope, cfg.start_date, cfg.end_date, lake.where
    )
    try:
        async with client:
            if isinstance(pacer, RedisPacer):
                await pacer.check()  # before any request to the API
            lake.open(cfg.identity, cfg.partition)
            reporter = progress(harvester) if progress else None
            try:
                if reporter is not None:
                    reporter.start()
                await harvester.run()
            finally:
                if reporter is not None:
                    reporter.close()
                _keep_learned_rate(lake, pacer)
                lake.close()
    except asyncio.CancelledError:
        if not stop_reason:
            raise
        harvester.stats.stopped = stop_reason[0]
        log.warning("stopped: %s; committed shards are kept", stop_reason[0])
    except HarvestError as e:
        error = e
    finally:
        if deadline:
            deadline.cancel()
        if isinstance(pacer, RedisPacer):
            await pacer.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
    code = error.exit_code if error is not None else report.exit_code(harvester.stats, cfg.allow_unverified)
    rep = report.build(
        cfg, harvester, client.stats, pacer.describe(), code, str(error) if error else None, started
    )
    JOURNAL.log(logging.INFO if code == 0 else logging.ERROR, "run end: %s", report.one_line(rep))
    return rep


def starting_rate(cfg: HarvestConfig) -> float | None:
    """The request rate a run starts at, as far as its settings tell before the lake is read:
    None without a limit, the number asked for, or 0 for ``auto`` (it starts low and climbs)."""
    if cfg.rate is None or cfg.rate == "unlimited":
        return None
    return 0.0 if cfg.rate == "auto" else float(cfg.rate)


def _learned_rate(lake: Lake) -> float | None:
    """The request limit an earlier ``--rate auto`` run found (a number the lake holds, so
    checked: a finite rate, else ignored)."""
    value = lake.identity.server_fact("rate_limit")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6:
        return float(value)
    return None


def _keep_learned_rate(lake: Lake, pacer: Pacer) -> None:
    """Keep the limit ``--rate auto`` found in the lake (never in a lake this run did not
    commit anything to), so the next run starts there."""
    ceiling = pacer.ceiling if isinstance(pacer, (AutoRate, SharedAutoRate)) else None
    if ceiling is not None and lake.lock.held and lake.identity.pending is None:
        lake.identity.record_server_fact("rate_limit", round(ceiling, 3))
