"""The HTTP client: one aiohttp session, auth headers, pacing, retries, error types.

Every request goes through :meth:`Client.get`: wait out a shared 429 pause, take a slot of
the in-flight cap, take a slot of the rate limit, send, then classify the answer:

* 200 with a body the caller can decode → done;
* 429 → every worker pauses for ``Retry-After`` (header, else the body's
  ``error.details.retryAfter``, else backoff), then retry;
* 408, 5xx, timeouts, resets, truncated or undecodable bodies → retry with capped
  exponential backoff and full jitter;
* 401/403 → :class:`AuthError`; 404 → :class:`NotFound`; other 4xx → :class:`ApiError`;
* a redirect (3xx) → :class:`ApiError`, never followed: the credentials travel as headers,
  which aiohttp would carry to whatever origin or scheme the ``Location`` names.

Everything a server controls is bounded: a body larger than ``max_body`` bytes (counted
after decompression) is cut off and fails its shard (:class:`BadResponse`); ``Retry-After``
and a 429's named limit are clamped (:data:`MAX_WAIT`; see :mod:`harvester.ratelimit`).

The token is only ever in the session's default headers: no message built here quotes a
header, and no aiohttp exception (which may carry the request) is passed through as text.
Server text that reaches a message is cleaned (:func:`harvester.errors.clean`) and any
occurrence of the token in it is masked.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from harvester.api.pacing import Pacer
from harvester.errors import (
    ApiError,
    AuthError,
    BadResponse,
    DecodeError,
    NotFound,
    RetriesExhausted,
    Unreachable,
    clean,
)
from harvester.version import __version__

T = TypeVar("T")
log = logging.getLogger("harvester.client")
MAX_WAIT = 60.0  # the longest pause a 429 may impose, whatever Retry-After says
DEFAULT_MAX_BODY = 64 << 20  # a page of 100 CDRs is ~150 KB; a body past this is not a page


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


def parse_retry_after(header: str | None, doc: Any, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date), else the decoded body's
    ``retryAfter``; None when neither says. Not clamped (see :func:`throttle_wait`); a value
    that is not a finite number of seconds counts as not said."""
    if header:
        header = header.strip()
        try:
            seconds = float(header)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
                seconds = when.timestamp() - (time.time() if now is None else now)
            except (TypeError, ValueError, OverflowError, IndexError):
                seconds = math.nan
        if math.isfinite(seconds):
            return seconds
    if isinstance(doc, dict):
        err = doc.get("error")
        details = err.get("details") if isinstance(err, dict) else doc.get("details")
        value = details.get("retryAfter") if isinstance(details, dict) else doc.get("retryAfter")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def throttle_wait(asked: float | None, throttles: int, policy: RetryPolicy) -> float:
    """How long a 429 pauses every worker: what the server asked, held between a floor that
    doubles with each 429 in a row for this request (a server answering ``Retry-After: 0``
    forever must not be hammered) and :data:`MAX_WAIT` (one answer must not stop the run
    for hours)."""
    floor = min(MAX_WAIT, policy.backoff_base * 2 ** min(max(throttles - 1, 0), 8))
    if asked is None:
        return min(MAX_WAIT, random.uniform(floor, 2 * floor))
    return min(MAX_WAIT, max(floor, asked))


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


def error_message(body: bytes, secrets: tuple[str, ...] = ()) -> str:
    """The API's message from either documented error shape, else the raw text; cleaned for
    one line (:func:`harvester.errors.clean`), with any of ``secrets`` masked."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:400].decode("utf-8", "replace")
    else:
        text = str(doc)[:400]
        if isinstance(doc, dict):
            err = doc.get("error")
            if isinstance(err, dict):
                code, msg = err.get("code"), err.get("message")
                text = f"{code}: {msg}" if code and msg else str(msg or code or doc)
            elif isinstance(doc.get("message"), str):
                text = doc["message"]
            elif isinstance(err, str):
                text = err
    return clean(mask(text, secrets)) or "(empty body)"


def mask(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: never its user, password, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unparseable URL)"
    host = f"[{host}]" if ":" in host else host
    return clean(f"{parts.scheme}://{host}{port}" if parts.scheme else "(a relative URL)", 120)


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
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = origin(self.base_url).split("://", 1)[-1]
        self.max_body = max_body
        self._secrets = (auth_token,)
        self._clamped = False
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
        async with self._session.get(
            self.base_url + path, params=params, proxy=self._proxy, allow_redirects=False
        ) as resp:
            body = await self._read(resp)
        if self.latencies is not None:
            self.latencies.append(time.perf_counter() - t0)
        return resp.status, resp.headers, body

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The body, decompressed, refused once it passes ``max_body`` bytes (an endless or
        inflating body costs at most that much memory)."""
        cap = self.max_body
        if (
            resp.content_length is not None
            and resp.content_length > cap
            and not resp.headers.get("Content-Encoding")
        ):
            raise BadResponse(f"answer of {resp.content_length} bytes is larger than --max-body-mb")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise BadResponse(f"answer larger than --max-body-mb ({cap >> 20} MB): cut off")
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def get(
        self, path: str, params: Mapping[str, str] | None, decode: Callable[[bytes], T], what: str
    ) -> T:
        """GET ``path`` and decode it, retrying what is worth retrying; ``what`` names it.

        Raises a :class:`~harvester.errors.ShardError` for what fails this request only, and
        :class:`AuthError` or :class:`Unreachable` for what fails the run. A request whose
        every attempt failed to connect is :class:`Unreachable` whatever ``--retries`` says."""
        reason = "no attempt"
        attempt = throttles = 0  # errors and 429s have separate budgets: a 429 is "wait", not "broken"
        connect_only = True  # every failure so far was a failure to connect
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
                        f"cannot connect to {self.host}: its TLS certificate is not trusted "
                        f"({clean(why)}); if a private CA signed it, name that CA's PEM file in "
                        "SSL_CERT_FILE"
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
                if status or not reason.startswith("cannot connect"):
                    connect_only = False
            if status:
                self._connect_failures = 0
                self.stats.bytes += len(body)
            if status == 200:
                try:
                    result = decode(body)
                except DecodeError as e:
                    reason = f"undecodable body ({clean(e)})"
                else:
                    await self.pacer.after(throttled=False)
                    return result
            elif status == 429:
                throttles += 1
                self.stats.throttled += 1
                doc = _json_or_none(body)  # decoded once for both hints
                await self.pacer.after(throttled=True, limit_hint=parse_limit_hint(doc))
                asked = parse_retry_after(headers.get("Retry-After"), doc)
                wait = throttle_wait(asked, throttles, self.policy)
                if asked is not None and asked > MAX_WAIT and not self._clamped:
                    self._clamped = True
                    log.warning("the server asked to wait %.0f s after a 429; waiting %g s", asked, wait)
                self.pause_all(wait)
                reason = f"429 rate limited (waiting {wait:g}s)"
            elif 300 <= status < 400:
                where = origin(headers.get("Location", ""))
                raise ApiError(
                    status,
                    f"{what}: redirected to {where}, not followed (the credentials are never sent "
                    "to another address); if the API moved, use its new address as --base-url",
                )
            elif status in (401, 403):
                raise AuthError(f"HTTP {status} from {self.host}: {self._said(body)}")
            elif status == 404:
                raise NotFound(404, f"{what}: {self._said(body)}")
            elif status and status != 408 and status < 500:
                raise ApiError(status, f"{what}: {self._said(body)}")
            elif status:
                reason = f"HTTP {status} ({self._said(body)})"
            if wait is None:
                attempt += 1
            if attempt > self.policy.retries or throttles > self.policy.throttle_retries:
                break
            self.stats.retries += 1
            log.info("retry %d for %s: %s", attempt + throttles, what, reason)
            if wait is None:
                await asyncio.sleep(self._backoff(attempt - 1))
        tries = attempt + throttles
        if connect_only and attempt:
            raise Unreachable(f"{reason} (after {tries} attempts)")
        raise RetriesExhausted(f"{what}: {reason} (after {tries} attempts)")

    def _said(self, body: bytes) -> str:
        """What an error body says, fit for one line, the token masked."""
        return error_message(body, self._secrets)


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
