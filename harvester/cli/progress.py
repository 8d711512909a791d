"""Live progress on stderr: a tqdm bar on a terminal, a log line every N seconds otherwise.

The reporter samples the run's counters on its own timer (twice a second for the bar), so
the hot path pays nothing per page: measured in ``benchmarks/`` (scenario ``progress``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

from harvester.harvest.engine import Harvester

log = logging.getLogger("harvester.progress")


class Progress:
    """Samples a running :class:`Harvester` and shows where it is."""

    def __init__(self, harvester: Harvester, mode: str, interval: float = 30.0) -> None:
        self.h = harvester
        self.mode = mode  # bar | log | off
        self.interval = 0.5 if mode == "bar" else interval
        self._task: asyncio.Task[None] | None = None
        self._bar: Any = None
        self._last = (time.monotonic(), 0, 0)  # when, records, requests

    def start(self) -> None:
        if self.mode == "off":
            return
        log.setLevel(logging.INFO)  # progress lines show even at the default warning level
        if self.mode == "bar":
            # A pseudo-terminal may report a 0×0 size (under `script`, in CI); tqdm would then
            # draw nothing (no rows) or a zero-width bar: assume 160×40.
            width, height = _terminal_size()
            self._bar = tqdm(
                total=0,
                unit="shard",
                file=sys.stderr,
                dynamic_ncols=width > 0,
                ncols=None if width > 0 else 160,
                nrows=None if height > 0 else 40,
                leave=True,
                desc="shards",
                mininterval=0.25,
                bar_format="{desc} {n_fmt}/{total_fmt} |{bar:12}| {elapsed}<{remaining} {postfix}",
            )
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def snapshot(self) -> dict[str, Any]:
        s, c, counts = self.h.stats, self.h.client.stats, self.h.fetcher.pages.counts
        now = time.monotonic()
        when, records, requests = self._last
        dt = max(1e-9, now - when)
        self._last = (now, counts.fetched, c.requests)
        pacer = self.h.client.pacer
        return {
            "done": s.done,
            "total": s.shards_planned,
            "pages": counts.pages,
            "records": self._last[1],
            "records_per_s": (self._last[1] - records) / dt,
            "requests_per_s": (c.requests - requests) / dt,
            "limit": pacer.describe() if pacer.rate is None else f"{pacer.rate:.1f}/s",
            "retries": c.retries,
            "throttled": c.throttled,
        }

    def tick(self) -> None:
        snap = self.snapshot()
        if self._bar is not None:
            if self._bar.total != snap["total"]:
                self._bar.total = snap["total"]
            self._bar.n = snap["done"]
            self._bar.set_postfix_str(
                f"{snap['pages']:,} pages {snap['records']:,} rec {snap['records_per_s']:,.0f} rec/s | "
                f"{snap['requests_per_s']:.0f} req/s (limit {snap['limit']}) | "
                f"{snap['retries']} retries {snap['throttled']}×429",
                refresh=True,
            )
        else:
            log.info(
                "progress: %d/%d shards, %d pages, %d records (%.0f/s), %.1f req/s (limit %s), "
                "%d retries, %d × 429",
                snap["done"],
                snap["total"],
                snap["pages"],
                snap["records"],
                snap["records_per_s"],
                snap["requests_per_s"],
                snap["limit"],
                snap["retries"],
                snap["throttled"],
            )

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._bar is not None:
            self.tick()
            self._bar.close()


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


def choose_mode(flag: bool | None, quiet: bool) -> str:
    """``--progress`` forces the bar, ``--no-progress`` turns it off, else: bar on a TTY."""
    if flag is True:
        return "bar"  # asked for by name: even with --quiet, even into a pipe
    if flag is False or quiet:
        return "off"
    if sys.stderr.isatty():
        return "bar"
    return "log"
