"""Request pacing shared by every worker: a fixed rate, none, or one that finds the limit.

* :class:`FixedRate` paces evenly with ``aiolimiter`` (bucket of one request, so a server
  whose own bucket is small never sees a burst).
* :class:`AutoRate` starts modestly, grows while requests succeed, and on a 429 steps down
  gently below the rate that was refused. It remembers the refused rates (the ceiling) and
  creeps towards that ceiling slowly instead of hammering it, so 429s stay rare while the
  achieved rate stays close to the server's limit (a halving on each 429 would average well
  under it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter
from redis.asyncio import from_url as redis_from_url
from redis.exceptions import RedisError

from harvester.errors import Unreachable, clean

log = logging.getLogger("harvester.ratelimit")
HINT_SPAN = 4.0  # a 429's named limit is trusted down to a quarter of the rate it refused


class Pacer:
    """No limit at all."""

    def __init__(self) -> None:
        self.rate: float | None = None

    async def acquire(self) -> None:
        return None

    def on_success(self) -> None:
        return None

    def on_throttle(self, limit_hint: float | None = None) -> None:
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
    """Adaptive rate: find the server's request limit and settle just under it.

    * Slow start: +50% a second from a modest rate until the first 429.
    * A 429 sets the ceiling. If the answer names the limit (the documented error body carries
      ``details.limit``, e.g. ``{limitType, limit, current, retryAfter}``), that is the ceiling;
      otherwise the rate that was refused is, and every later 429 can only lower it.
    * After a 429 the rate drops to 90% of the ceiling (95% of a named limit) and climbs back
      gently (5% a second) to that level, then holds there. Each 429 also costs a whole
      ``Retry-After`` pause for every worker, so holding just under the limit beats probing it.
    * After 30 s without a 429 the ceiling is raised 5%: a server may grant more later.
    """

    def __init__(
        self,
        start: float = 5.0,
        floor: float = 0.5,
        cap: float = 2000.0,
        clock: Callable[[], float] = time.monotonic,
        learned: float | None = None,
    ) -> None:
        super().__init__()
        self.floor, self.cap = floor, cap
        # A limit learned by an earlier run: start just under it instead of from ``start``.
        self.ceiling: float | None = learned if learned is not None and floor <= learned <= cap else None
        start = 0.9 * self.ceiling if self.ceiling is not None else start
        self.current = start
        self.rate = start
        self.named = False  # the ceiling came from the server's own numbers
        self.throttles = 0
        self._clock = clock
        self._next = 0.0
        self._last_grow = clock()
        self._last_cut = -1e9
        self._warned = False

    async def acquire(self) -> None:
        # Virtual scheduling: each request takes the next free slot 1/rate after the last one.
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + 1 / self.current
        if slot > now:
            await asyncio.sleep(slot - now)

    def _target(self) -> float:
        assert self.ceiling is not None
        return self.ceiling * (0.95 if self.named else 0.9)

    def _set(self, rate: float) -> None:
        self.current = self.rate = max(self.floor, min(self.cap, rate))

    def on_success(self) -> None:
        now = self._clock()
        elapsed = now - self._last_grow
        if elapsed < 0.25:
            return
        self._last_grow = now
        if self.ceiling is None:
            self._set(self.current * 1.5**elapsed)
            return
        if now - self._last_cut > 30:
            self.ceiling *= 1.05  # quiet for 30 s: the server may allow more now
            self._last_cut = now - 15  # and look again in 15 s
        self._set(min(self._target(), self.current * 1.05**elapsed))

    def on_throttle(self, limit_hint: float | None = None) -> None:
        now = self._clock()
        self.throttles += 1
        if limit_hint is not None and limit_hint > 0:
            limit_hint = self._plausible(limit_hint)
            self.ceiling = limit_hint if not self.named else min(self.ceiling or limit_hint, limit_hint)
            self.named = True
        elif not self.named:
            refused = self.current
            self.ceiling = refused if self.ceiling is None else min(self.ceiling, refused)
        if now - self._last_cut < 1.0:
            return  # the same burst of 429s from requests already in flight: cut once
        self._last_cut = now
        self._last_grow = now
        self._set(min(self.current, self._target()))
        if self.ceiling is not None and not self.named and self.current >= self._target() * 0.999:
            self.ceiling *= 0.97  # refused again at the target itself: the limit is lower still

    def _plausible(self, hint: float) -> float:
        """A named limit held to what can be true: the rate just refused was at most a few
        times the real limit (slow start grows 1.5× a second), so a hint far below it (say
        ``limit: 1e-6``) is a broken or hostile answer, not a reason to crawl for an hour."""
        low = max(self.floor, self.current / HINT_SPAN)
        if hint >= low:
            return min(hint, self.cap)
        if not self._warned:
            self._warned = True
            log.warning(
                "a 429 names a limit of %.3g requests/s, far below the %.1f/s just refused; using %.1f/s",
                hint,
                self.current,
                low,
            )
        return low

    def describe(self) -> str:
        return f"auto (settled at {self.current:.1f}/s)"


# One budget for every worker of a credential, kept in Redis: the key holds the time of the
# next free request slot; each request takes a slot ``interval`` after the last one, so N
# workers together are paced evenly at the rate, as one would be. Redis's own clock decides.
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, nxt)
redis.call('SET', KEYS[1], tostring(slot + tonumber(ARGV[1])), 'PX', 600000)
return tostring(slot - now)
"""


class SharedRate(Pacer):
    """At most ``rate`` requests per second for one credential across every worker that
    shares the Redis at ``url`` (``redis://HOST:PORT/DB``). Redis unreachable, at the start or
    later, is :class:`~harvester.errors.Unreachable`: the run stops (exit 4), never exceeds."""

    def __init__(self, rate: float, url: str, credential: str) -> None:
        super().__init__()
        self.rate = rate
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"  # never a password
        self._interval = 1 / rate
        self._key = f"vobiz-harvester:rate:{credential}"
        self._redis = redis_from_url(url, socket_connect_timeout=5, socket_timeout=5)
        self._take = self._redis.register_script(_TAKE_SLOT)

    async def check(self) -> None:
        """Reach Redis once (before any request to the API)."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            raise Unreachable(
                f"cannot reach the rate store {self.where} ({clean(e)}): start it, or drop --rate-store"
            ) from None

    async def acquire(self) -> None:
        try:
            wait = float(await self._take(keys=[self._key], args=[self._interval]))
        except (RedisError, OSError) as e:
            raise Unreachable(
                f"lost the rate store {self.where} ({clean(e)}): committed shards are kept; "
                "re-run when it is back"
            ) from None
        if wait > 0:
            await asyncio.sleep(wait)

    async def close(self) -> None:
        await self._redis.aclose()

    def describe(self) -> str:
        return f"{self.rate:g}/s shared"


def make_pacer(rate: float | str | None, learned: float | None = None) -> Pacer:
    """``None``/``'unlimited'`` → no limit, ``'auto'`` → adaptive (starting under ``learned``,
    a limit an earlier run found, when there is one), a number → fixed."""
    if rate is None or rate == "unlimited":
        return Pacer()
    if rate == "auto":
        return AutoRate(learned=learned)
    return FixedRate(float(rate))
