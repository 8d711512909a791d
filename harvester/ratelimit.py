"""Request pacing shared by every worker: a fixed rate, none, or one that finds the limit.

* :class:`FixedRate` paces evenly with ``aiolimiter`` (bucket of one request, so a server
  whose own bucket is small never sees a burst).
* :class:`AutoRate` starts modestly, grows while requests succeed, and on a 429 steps down
  gently below the rate that was refused. It remembers the refused rates (the ceiling) and
  creeps towards that ceiling slowly instead of hammering it, so 429s stay rare while the
  achieved rate stays close to the server's limit. A halving on each 429 would average
  about 75% of the limit; this keeps ~90% or more with a 429 every tens of seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter


class Pacer:
    """No limit at all."""

    def __init__(self) -> None:
        self.rate: float | None = None

    async def acquire(self) -> None:
        return None

    def on_success(self) -> None:
        return None

    def on_throttle(self) -> None:
        return None

    def describe(self) -> str:
        return "unlimited"


class FixedRate(Pacer):
    """At most ``rate`` requests per second, evenly spaced."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate
        self._limiter = AsyncLimiter(1, 1 / rate)

    async def acquire(self) -> None:
        await self._limiter.acquire()

    def describe(self) -> str:
        return f"{self.rate:g}/s"


class AutoRate(Pacer):
    """Adaptive rate: fast growth to the first 429, then a careful hold under the ceiling."""

    def __init__(
        self,
        start: float = 5.0,
        floor: float = 0.5,
        cap: float = 2000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.current = start
        self.rate = start
        self.floor, self.cap = floor, cap
        self.ceiling: float | None = None
        self.throttles = 0
        self._clock = clock
        self._next = 0.0
        self._last_grow = clock()
        self._last_cut = -1e9
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # Virtual scheduling: each request takes the next free slot 1/rate after the last.
        async with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + 1 / self.current
        if slot > now:
            await asyncio.sleep(slot - now)

    def on_success(self) -> None:
        now = self._clock()
        elapsed = now - self._last_grow
        if elapsed < 0.25:
            return
        self._last_grow = now
        if self.ceiling is None:
            growth = 1.5**elapsed  # slow start: +50% a second until the first 429
        elif self.current < 0.9 * self.ceiling:
            growth = 1.1**elapsed
        else:
            growth = 1.004**elapsed  # hold just under the known ceiling, probe slowly
        self.current = self.rate = min(self.cap, self.current * growth)

    def on_throttle(self) -> None:
        now = self._clock()
        self.throttles += 1
        if now - self._last_cut < 1.0:
            return  # the same burst of 429s from requests already in flight: cut once
        self._last_cut = now
        refused = self.current
        self.ceiling = refused if self.ceiling is None else 0.5 * self.ceiling + 0.5 * refused
        self.current = self.rate = max(self.floor, min(refused, self.ceiling) * 0.9)
        self._last_grow = now

    def describe(self) -> str:
        return f"auto (settled at {self.current:.1f}/s)"


def make_pacer(rate: float | str | None) -> Pacer:
    """``None``/``'unlimited'`` → no limit, ``'auto'`` → adaptive, a number → fixed."""
    if rate is None or rate == "unlimited":
        return Pacer()
    if rate == "auto":
        return AutoRate()
    return FixedRate(float(rate))
