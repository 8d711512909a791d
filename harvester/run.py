"""One harvest run from a config to a report: wires client, lake and engine together,
turns errors into exit codes, and stops cleanly on a deadline, SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from harvester import report
from harvester.client import Client, RetryPolicy
from harvester.config import HarvestConfig
from harvester.engine import Harvester
from harvester.errors import HarvestError
from harvester.lake import Lake
from harvester.logs import JOURNAL
from harvester.ratelimit import make_pacer
from harvester.workers import DecodePool

log = logging.getLogger("harvester.run")


async def harvest(cfg: HarvestConfig, progress: Callable[[Harvester], Any] | None = None) -> dict[str, Any]:
    """Run one harvest; returns the report (its ``exit_code`` is the process exit code)."""
    lake = Lake(cfg.out, cfg.s3_endpoint_url, cfg.s3_region)
    lake.check_usable()
    pacer = make_pacer(cfg.rate)
    client = Client(
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
    pool = DecodePool(cfg.decode_workers) if cfg.decode_workers > 0 else None
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
    JOURNAL.info(
        "run start: scope %s, days %s..%s, lake %s", cfg.scope, cfg.start_date, cfg.end_date, lake.where
    )
    try:
        async with client:
            lake.open(cfg.identity)
            reporter = progress(harvester) if progress else None
            try:
                if reporter is not None:
                    reporter.start()
                await harvester.run()
            finally:
                if reporter is not None:
                    reporter.close()
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
        if pool is not None:
            await pool.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
    code = error.exit_code if error is not None else report.exit_code(harvester.stats, cfg.allow_unverified)
    rep = report.build(
        cfg, harvester.stats, client.stats, pacer.describe(), code, str(error) if error else None
    )
    JOURNAL.log(logging.INFO if code == 0 else logging.ERROR, "run end: %s", report.one_line(rep))
    return rep
