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
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter
from redis.asyncio import from_url as redis_from_url
from redis.commands.core import AsyncScript
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

    async def after(self, throttled: bool, limit_hint: float | None = None) -> None:
        """What the client calls after each answer: a success, or a 429 (with the limit it
        names, if any). A pacer whose state lives elsewhere (Redis) overrides this."""
        if throttled:
            self.on_throttle(limit_hint)
        else:
            self.on_success()

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

    * Slow start: from 10/s, doubling every second until the first 429.
    * A 429 sets the ceiling. If the answer names the limit (the documented error body carries
      ``details.limit``, e.g. ``{limitType, limit, current, retryAfter}``), that is the ceiling;
      otherwise the rate that was answered over the last second is (what the server let
      through, not what was asked), and every later 429 can only lower it.
    * After a 429 the rate drops to 90% of the ceiling (95% of a named limit) and climbs back
      gently (5% a second) to that level, then holds there. Requests already waiting for a
      slot take a new one at the new rate, so a cut is not followed by a burst at the old one.
    * After 30 s without a 429 the ceiling is raised 5%: a server may grant more later.
    """

    def __init__(
        self,
        start: float = 10.0,
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
        self._epoch = 0  # bumped by a cut: slots taken before it are taken again
        self._answered: deque[float] = deque()  # when requests succeeded, over the last second
        self._last_grow = clock()
        self._last_cut = -1e9
        self._warned = False

    async def acquire(self) -> None:
        # Virtual scheduling: each request takes the next free slot 1/rate after the last one;
        # a cut while it waits sends it back for a slot at the new rate.
        while True:
            now = self._clock()
            epoch = self._epoch
            slot = max(now, self._next)
            self._next = slot + 1 / self.current
            if slot > now:
                await asyncio.sleep(slot - now)
            if epoch == self._epoch:
                return

    def _target(self) -> float:
        assert self.ceiling is not None
        return self.ceiling * (0.95 if self.named else 0.9)

    def _set(self, rate: float) -> None:
        self.current = self.rate = max(self.floor, min(self.cap, rate))

    def on_success(self) -> None:
        now = self._clock()
        self._answered.append(now)
        while self._answered and self._answered[0] < now - 1.0:
            self._answered.popleft()
        elapsed = now - self._last_grow
        if elapsed < 0.25:
            return
        self._last_grow = now
        if self.ceiling is None:
            self._set(self.current * 2.0**elapsed)
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
            refused = max(self._reference(now), self.floor)
            self.ceiling = refused if self.ceiling is None else min(self.ceiling, refused)
        if now - self._last_cut < 1.0:
            return  # the same burst of 429s from requests already in flight: cut once
        self._last_cut = now
        self._last_grow = now
        self._set(min(self.current, self._target()))
        self._epoch += 1
        self._next = now + 1 / self.current
        if self.ceiling is not None and not self.named and self.current >= self._target() * 0.999:
            self.ceiling *= 0.97  # refused again at the target itself: the limit is lower still

    def _reference(self, now: float) -> float:
        """The rate the server let through: answers over the last second, or the rate asked
        when there is none yet (a burst the server's bucket absorbed is not its limit)."""
        answered = sum(1 for t in self._answered if t >= now - 1.0)
        return min(self.current, float(answered)) if answered else self.current

    def _plausible(self, hint: float) -> float:
        """A named limit held to what can be true: the rate just refused was at most a few
        times the real limit (slow start grows 1.5× a second), so a hint far below it (say
        ``limit: 1e-6``) is a broken or hostile answer, not a reason to crawl for an hour."""
        low = max(self.floor, self._reference(self._clock()) / HINT_SPAN)
        if hint >= low:
            return min(hint, self.cap)
        if not self._warned:
            self._warned = True
            log.warning(
                "a 429 names a limit of %.3g requests/s, far below the %.1f/s just answered; using %.1f/s",
                hint,
                low * HINT_SPAN,
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


class RedisPacer(Pacer):
    """A pacer whose state is kept in the Redis at ``url`` (``redis://HOST:PORT/DB``), one key
    per credential. Redis unreachable, at the start or later, is
    :class:`~harvester.errors.Unreachable`: the run stops (exit 4), never exceeds."""

    def __init__(self, url: str, credential: str, kind: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}"  # never a password
        self._key = f"vobiz-harvester:{kind}:{credential}"
        self._redis = redis_from_url(url, socket_connect_timeout=5, socket_timeout=5)

    async def check(self) -> None:
        """Reach Redis once (before any request to the API)."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as e:
            raise Unreachable(
                f"cannot reach the rate store {self.where} ({clean(e)}): start it, or drop --rate-store"
            ) from None

    async def _run(self, script: AsyncScript, *args: float | str) -> list[str]:
        try:
            answer = await script(keys=[self._key], args=list(args))
        except (RedisError, OSError) as e:
            raise Unreachable(
                f"lost the rate store {self.where} ({clean(e)}): committed shards are kept; "
                "re-run when it is back"
            ) from None
        answers = answer if isinstance(answer, list) else [answer]
        return [a.decode() if isinstance(a, bytes) else str(a) for a in answers]

    async def close(self) -> None:
        await self._redis.aclose()


class SharedRate(RedisPacer):
    """At most ``rate`` requests per second for one credential across every worker that
    shares the Redis."""

    def __init__(self, rate: float, url: str, credential: str) -> None:
        super().__init__(url, credential, "rate")
        self.rate = rate
        self._interval = 1 / rate
        self._take = self._redis.register_script(_TAKE_SLOT)

    async def acquire(self) -> None:
        wait = float((await self._run(self._take, self._interval))[0])
        if wait > 0:
            await asyncio.sleep(wait)

    def describe(self) -> str:
        return f"{self.rate:g}/s shared"


# AutoRate's rules for every worker of a credential at once: one rate, one ceiling, one
# schedule of slots in a Redis hash, changed only by this script (atomic), on Redis's clock.
# ARGV: op (slot | grow | cut | epoch), start rate, named limit (0: none).
_AUTO = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op, start, hint = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local h = {}
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local rate = tonumber(h.rate or start)
local ceiling = tonumber(h.ceiling or '0')
local named = h.named == '1'
local nxt = tonumber(h.next or '0')
local epoch = tonumber(h.epoch or '0')
local grown = tonumber(h.grown or tostring(now))
local cut = tonumber(h.cut or '-1000000000')
local wait = 0
local function target() if named then return ceiling * 0.95 end return ceiling * 0.9 end
if op == 'slot' then
  local slot = math.max(now, nxt)
  nxt = slot + 1 / rate
  wait = slot - now
elseif op == 'grow' and now - grown >= 0.25 then
  local elapsed = now - grown
  grown = now
  if ceiling == 0 then
    rate = rate * 2 ^ elapsed
  else
    if now - cut > 30 then ceiling = ceiling * 1.05; cut = now - 15 end
    rate = math.min(target(), rate * 1.05 ^ elapsed)
  end
elseif op == 'cut' then
  if hint > 0 then
    if named then ceiling = math.min(ceiling, hint) else ceiling = hint end
    named = true
  elseif not named then
    if ceiling == 0 then ceiling = rate else ceiling = math.min(ceiling, rate) end
  end
  if now - cut >= 1.0 then
    cut = now; grown = now
    rate = math.min(rate, target())
    epoch = epoch + 1
    nxt = now + 1 / math.max(rate, 0.5)
    if not named and rate >= target() * 0.999 then ceiling = ceiling * 0.97 end
  end
end
rate = math.max(0.5, math.min(2000, rate))
redis.call('HSET', key, 'rate', tostring(rate), 'ceiling', tostring(ceiling), 'named', named and '1' or '0',
  'next', tostring(nxt), 'epoch', tostring(epoch), 'grown', tostring(grown), 'cut', tostring(cut))
redis.call('EXPIRE', key, 604800)
return {tostring(wait), tostring(epoch), tostring(rate), tostring(ceiling)}
"""


class SharedAutoRate(RedisPacer):
    """``--rate auto`` for every worker of a credential that shares the Redis: the rules of
    :class:`AutoRate`, with one state in Redis. Workers pace at one shared rate, grow it
    together, and a 429 seen by any of them cuts it for all. What was learnt stays in Redis
    for a week, so the next run of any worker starts just under it."""

    def __init__(self, url: str, credential: str, learned: float | None = None) -> None:
        super().__init__(url, credential, "auto")
        self._start = 0.9 * learned if learned else 10.0
        self._script = self._redis.register_script(_AUTO)
        self.ceiling: float | None = None
        self.current = self._start
        self.throttles = 0
        self._grown = 0.0

    async def _op(self, op: str, hint: float = 0.0) -> tuple[float, int]:
        wait, epoch, rate, ceiling = await self._run(self._script, op, self._start, hint)
        self.current = self.rate = float(rate)
        self.ceiling = float(ceiling) or None
        return float(wait), int(epoch)

    async def acquire(self) -> None:
        while True:  # a cut by any worker while this one waits: take a slot at the new rate
            wait, epoch = await self._op("slot")
            if wait <= 0:
                return
            await asyncio.sleep(wait)
            if (await self._op("epoch"))[1] == epoch:
                return

    async def after(self, throttled: bool, limit_hint: float | None = None) -> None:
        if throttled:
            self.throttles += 1
            await self._op("cut", limit_hint or 0.0)
        elif time.monotonic() - self._grown >= 0.25:  # growth is decided four times a second
            self._grown = time.monotonic()
            await self._op("grow")

    def describe(self) -> str:
        return f"auto shared (at {self.current:.1f}/s)"


def make_pacer(
    rate: float | str | None, learned: float | None = None, store: str | None = None, credential: str = ""
) -> Pacer:
    """``None``/``'unlimited'`` → no limit, ``'auto'`` → adaptive (starting under ``learned``,
    a limit an earlier run found, when there is one), a number → fixed; with ``store`` (a
    Redis URL) the budget is shared by every worker of the credential."""
    if rate is None or rate == "unlimited":
        return Pacer()
    if rate == "auto":
        return SharedAutoRate(store, credential, learned) if store else AutoRate(learned=learned)
    return SharedRate(float(rate), store, credential) if store else FixedRate(float(rate))
