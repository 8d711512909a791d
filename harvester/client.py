"""The HTTP client: one aiohttp session, auth headers, pacing, retries, error types.

Every request goes through :meth:`Client.get`: wait out a shared 429 pause, take a slot of
the in-flight cap, take a slot of the rate limit, send, then classify the answer:

* 200 with a body the caller can decode → done;
* 429 → every worker pauses for ``Retry-After`` (header, else the body's
  ``error.details.retryAfter``, else backoff), then retry;
* 408, 5xx, timeouts, resets, truncated or undecodable bodies → retry with capped
  exponential backoff and full jitter;
* 401/403 → :class:`AuthError`; 404 → :class:`NotFound`; other 4xx → :class:`ApiError`.

The token is only ever in the session's default headers: no message built here quotes a
header, and no aiohttp exception (which may carry the request) is passed through as text.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from harvester import __version__
from harvester.decode import DecodeError
from harvester.errors import ApiError, AuthError, NotFound, RetriesExhausted, Unreachable
from harvester.ratelimit import Pacer

T = TypeVar("T")
log = logging.getLogger("harvester.client")


@dataclass
class ClientStats:
    """Counters a run reports."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per request and the backoff curve."""

    retries: int = 8
    backoff_base: float = 0.25
    backoff_cap: float = 30.0
    connect_attempts: int = 4  # a host that refuses this many times in a row is unreachable
    throttle_retries: int = 100  # 429s one request may wait out before it gives up


def _json_or_none(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def parse_retry_after(header: str | None, doc: Any) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else the decoded body."""
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    if isinstance(doc, dict):
        err = doc.get("error")
        details = err.get("details") if isinstance(err, dict) else doc.get("details")
        value = details.get("retryAfter") if isinstance(details, dict) else doc.get("retryAfter")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return max(0.0, float(value))
    return None


def parse_limit_hint(doc: Any) -> float | None:
    """The requests/s limit a 429's decoded body names (``error.details.limit``), if any."""
    err = doc.get("error") if isinstance(doc, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    if not isinstance(details, dict) or str(details.get("limitType", "")).lower() == "concurrent":
        return None
    limit = details.get("limit")
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:
        return float(limit)
    return None


def error_message(body: bytes) -> str:
    """The API's message from either documented error shape, else the raw text."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return " ".join(text.split()) or "(empty body)"
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            code, msg = err.get("code"), err.get("message")
            return f"{code}: {msg}" if code and msg else str(msg or code or doc)
        if isinstance(doc.get("message"), str):
            return doc["message"]
        if isinstance(err, str):
            return err
    return str(doc)[:200]


class Client:
    """An authenticated, paced, retrying client for one base URL and one credential."""

    def __init__(
        self,
        base_url: str,
        auth_id: str,
        auth_token: str,
        pacer: Pacer,
        concurrency: int = 16,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self._headers = {
            "X-Auth-ID": auth_id,
            "X-Auth-Token": auth_token,
            "Accept": "application/json",
            "User-Agent": f"vobiz-harvester/{__version__}",
        }
        self.pacer = pacer
        self.concurrency = concurrency
        self.policy = policy or RetryPolicy()
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self.stats = ClientStats()
        self._sem = asyncio.Semaphore(concurrency)
        self._pause_until = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self.latencies: list[float] | None = None  # set to a list to record each request's latency
        self._connect_failures = 0

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self.timeout,
            # Proxies are resolved once (below) instead of aiohttp's trust_env, which
            # re-reads the environment and ~/.netrc on every request.
            trust_env=False,
        )
        self._proxy = env_proxy(self.base_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def pause_all(self, seconds: float) -> None:
        """Hold every worker's next request for ``seconds`` (a 429's wait)."""
        loop = asyncio.get_running_loop()
        self._pause_until = max(self._pause_until, loop.time() + seconds)

    async def _wait_pause(self) -> None:
        loop = asyncio.get_running_loop()
        paused = False
        while (wait := self._pause_until - loop.time()) > 0:
            paused = True
            await asyncio.sleep(wait)
        if paused and self.pacer.rate is None:
            # Unpaced workers would all resume at once and meet the server's bucket as one
            # burst (and another 429): spread their restart over a short window.
            await asyncio.sleep(random.uniform(0, 0.05 * self.concurrency))

    def _backoff(self, attempt: int) -> float:
        cap = min(self.policy.backoff_cap, self.policy.backoff_base * 2**attempt)
        return random.uniform(cap / 2, cap)

    async def _send(self, path: str, params: Mapping[str, str] | None) -> tuple[int, Any, bytes]:
        assert self._session is not None, "use 'async with Client(...)'"
        t0 = time.perf_counter()
        async with self._session.get(self.base_url + path, params=params, proxy=self._proxy) as resp:
            body = await resp.read()
        if self.latencies is not None:
            self.latencies.append(time.perf_counter() - t0)
        return resp.status, resp.headers, body

    async def get(
        self, path: str, params: Mapping[str, str] | None, decode: Callable[[bytes], T], what: str
    ) -> T:
        """GET ``path`` and decode it, retrying what is worth retrying; ``what`` names it."""
        reason = "no attempt"
        attempt = throttles = 0  # errors and 429s have separate budgets: a 429 is "wait", not "broken"
        while True:
            await self._wait_pause()
            wait: float | None = None
            async with self._sem:
                await self.pacer.acquire()
                self.stats.requests += 1
                try:
                    status, headers, body = await self._send(path, params)
                except aiohttp.ClientConnectorCertificateError as e:  # no retry will change it
                    why = getattr(e.certificate_error, "verify_message", None) or e.certificate_error
                    raise Unreachable(
                        f"cannot connect to {self.host}: its TLS certificate is not trusted ({why}); "
                        "if a private CA signed it, name that CA's PEM file in SSL_CERT_FILE"
                    ) from None
                except aiohttp.ClientConnectorError as e:
                    self._connect_failures += 1
                    reason = f"cannot connect to {self.host} ({_os_reason(e)})"
                    if self._connect_failures >= self.policy.connect_attempts:
                        raise Unreachable(reason) from None
                    status = 0
                except TimeoutError:
                    reason, status = "timed out", 0
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
                    reason, status = f"connection dropped mid-response ({type(e).__name__})", 0
                except (aiohttp.ClientError, OSError) as e:
                    reason, status = f"network error ({type(e).__name__})", 0
            if status:
                self._connect_failures = 0
                self.stats.bytes += len(body)
            if status == 200:
                try:
                    result = decode(body)
                except DecodeError as e:
                    reason = f"undecodable body ({e})"
                else:
                    self.pacer.on_success()
                    return result
            elif status == 429:
                throttles += 1
                self.stats.throttled += 1
                doc = _json_or_none(body)  # decoded once for both hints
                self.pacer.on_throttle(parse_limit_hint(doc))
                wait = parse_retry_after(headers.get("Retry-After"), doc)
                if wait is None:
                    wait = self._backoff(min(throttles, 6))
                wait = min(wait, self.policy.backoff_cap * 4)
                self.pause_all(wait)
                reason = f"429 rate limited (waiting {wait:g}s)"
            elif status in (401, 403):
                raise AuthError(f"HTTP {status} from {self.host}: {error_message(body)}")
            elif status == 404:
                raise NotFound(404, f"{what}: {error_message(body)}")
            elif status and status != 408 and status < 500:
                raise ApiError(status, f"{what}: {error_message(body)}")
            elif status:
                reason = f"HTTP {status} ({error_message(body)})"
            if wait is None:
                attempt += 1
            if attempt > self.policy.retries or throttles > self.policy.throttle_retries:
                break
            self.stats.retries += 1
            log.info("retry %d for %s: %s", attempt + throttles, what, reason)
            if wait is None:
                await asyncio.sleep(self._backoff(attempt - 1))
        tries = attempt + throttles
        raise RetriesExhausted(f"{what}: {reason} (after {tries} attempts)")


def env_proxy(base_url: str) -> str | None:
    """The proxy for ``base_url`` from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, like other HTTP tools."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _os_reason(e: aiohttp.ClientConnectorError) -> str:
    err = e.os_error
    text = getattr(err, "strerror", None) or type(err).__name__
    return str(text)
