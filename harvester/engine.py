"""The harvest: plan → fetch (worker pool) → decode → write → verify → commit.

Each shard is one task. A closed day is probed (page 1 gives ``pagination.pages``) and its
other pages fan out at once; the shared client caps requests in flight and paces them. With
decode workers, one worker keeps all of a closed day's pages and hands back its encoded file. A day
that is still open (the current UTC day) is walked page by page instead, then re-probed and
caught up until the distinct uuids match the latest total: newest-first pages shift while
calls arrive, so a parallel fetch would miss records and a forward walk repeats some.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from harvester.assemble import dedupe, order
from harvester.client import Client
from harvester.config import HarvestConfig
from harvester.decode import Collector, DecodeError, Page, check_shape, decode_page
from harvester.endpoints import list_params, list_path
from harvester.errors import HarvestError, ShardError, UsageError, shown
from harvester.lake import Lake
from harvester.plan import Shard, days, discover_accounts, shards_for
from harvester.store import StagedTable
from harvester.verify import Verdict, contradiction, table_sums, verify, verify_counts
from harvester.workers import DecodePool, Encoded, ShardJob

log = logging.getLogger("harvester.engine")
T = TypeVar("T")


@dataclass
class ShardResult:
    """How one shard ended."""

    shard: Shard
    status: str  # verified | unverified | failed | skipped | unchanged
    action: str  # harvested | reharvested | rechecked | skipped
    rows: int = 0
    pages: int = 0
    bytes: int = 0
    detail: str = ""


@dataclass
class RunStats:
    """Everything the report needs, filled in while the run goes."""

    started: float = field(default_factory=time.monotonic)
    shards_planned: int = 0
    pages: int = 0
    fetched: int = 0  # records received in pages (before dedupe)
    worker_pages: int = 0  # pages decoded by the decode workers
    records: int = 0  # records committed to the lake
    bytes: int = 0
    results: list[ShardResult] = field(default_factory=list)
    accounts: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # listed ids that cannot be harvested
    stopped: str | None = None

    def count(self) -> Counter[str]:
        c: Counter[str] = Counter()
        for r in self.results:
            c[r.status] += 1
            c[f"action:{r.action}"] += 1
        return c


@dataclass
class Streamed:
    """A large shard already written, row group by row group, to a staged file."""

    staged: StagedTable
    rows: int  # distinct uuids, which are the rows written (a stream with repeats is redone)
    sums: dict[str, float]


class Harvester:
    """One run over one lake."""

    def __init__(
        self, cfg: HarvestConfig, client: Client, lake: Lake, pool: DecodePool | None = None
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.client = client
        self.lake = lake
        self.stats = RunStats()
        # Shards open at once: enough to keep every request slot busy when shards are one page
        # each, few enough that memory is bound by requests in flight, not by harvest size.
        self._shard_sem = asyncio.Semaphore(cfg.concurrency + 4)
        self._streams = asyncio.Semaphore(2)  # shards streaming to their files at once
        self._prior: dict[Any, dict[str, Any]] = {}  # the manifest as it was when the run planned
        self.end_offset = 0  # 1 when the server treats end_date as exclusive (see day_window)
        # Shard assembly and file writes run here, off the event loop. On a local disk two
        # threads keep both cores busy and each more only adds GIL hand-offs (measured: more
        # CPU, no more speed); an object store's uploads wait on the network, so more at once.
        threads = 2 if lake.store.local else 6
        self._io = ThreadPoolExecutor(threads, thread_name_prefix="shard-io")

    # -- planning ------------------------------------------------------------------------
    async def accounts(self) -> list[str | None]:
        """Whose CDRs to fetch. In partner scope the listing is always read: ``--customer``
        ids are checked against it (an id the partner does not have is a usage error, which
        no re-run would fix), and listed ids that cannot be customer ids are reported."""
        if self.cfg.scope == "global":
            return [None]
        if self.cfg.scope == "account":
            return [self.cfg.customers[0] if self.cfg.customers else self.cfg.auth_id]
        listing = await discover_accounts(self.client)
        if not self.cfg.customers:
            self.stats.rejected = listing.rejected
            return [a["auth_id"] for a in listing.accounts]
        known = {a["auth_id"] for a in listing.accounts}
        for customer in self.cfg.customers:
            if customer not in known:
                raise UsageError(
                    f"--customer {shown(customer)} is not in this partner's listing of {len(known)} "
                    "customers: check the id ('vobiz-harvest accounts' lists them)"
                )
        return list(dict.fromkeys(self.cfg.customers))

    def plan(self, accounts: list[str | None]) -> list[tuple[Shard, str]]:
        """(shard, mode) pairs; mode is harvest, recheck or skip."""
        cfg = self.cfg
        self._prior = {rec.get("shard"): rec for rec in self.lake.manifest()}
        span = list(days(cfg.start_date - dt.timedelta(days=cfg.lookback), cfg.end_date))
        planned: dict[Shard, str] = {}
        for shard in shards_for(cfg.scope, accounts, span):
            planned[shard] = self._mode(shard, in_lookback=shard.day < cfg.start_date)
        # A shard harvested while its day was open is never final: re-check it every run.
        for rec in self._prior.values():
            if rec.get("open_day") and rec.get("scope") == cfg.scope:
                shard = Shard(dt.date.fromisoformat(rec["date"]), cfg.scope, rec.get("account"))
                if shard not in planned and not cfg.refresh:
                    planned[shard] = "recheck"
        return sorted(planned.items(), key=lambda kv: (kv[0].day, kv[0].who), reverse=True)

    def _mode(self, shard: Shard, in_lookback: bool) -> str:
        rec = self._prior.get(shard.key)
        if rec is None or self.cfg.refresh:
            return "harvest"
        if rec.get("open_day") or in_lookback:
            return "recheck"
        return "skip" if rec.get("verified") else "harvest"

    # -- running -------------------------------------------------------------------------
    async def run(self) -> RunStats:
        accounts = await self.accounts()
        self.stats.accounts = len([a for a in accounts if a])
        planned = self.plan(accounts)
        self.stats.shards_planned = len(planned)
        await self.day_window(planned, record=True)
        try:
            await _at_once(self._guarded(shard, mode) for shard, mode in planned)
        finally:
            self._io.shutdown(wait=True, cancel_futures=True)
        return self.stats

    async def day_window(self, planned: list[tuple[Shard, str]], record: bool) -> None:
        """How the server reads ``end_date``, kept in ``_lake.json`` once two probes agree.

        The docs show whole-day ranges (``2026-03-01``..``2026-03-31``) but never say whether
        ``end_date`` is inclusive. A server that treats it as exclusive would answer every
        one-day query with nothing, and every empty shard would "verify"; one read as
        exclusive by mistake would store each day's calls twice. So the totals of day D,
        day D+1 and the range D..D+1 tell the two apart, and one probe is never believed
        alone (a server still filling a day answers a lagging total, which reads as
        exclusive): a reading is recorded when two probes agree. A recorded "exclusive" is
        re-checked by each run with one probe (3 requests), and changed only when two probes
        agree on "inclusive"; a recorded "inclusive" cannot come from a lagging answer and is
        kept without a request.
        """
        known = self.lake.server_fact("end_date")
        known = known if known in ("inclusive", "exclusive") else None
        if known == "inclusive":
            self.end_offset = 0
            return
        todo = [s for s, mode in planned if mode != "skip" and s.day < self.cfg.today]
        todo.sort(key=lambda s: s.day + dt.timedelta(days=1) >= self.cfg.today)  # two closed days first
        todo = todo[:4] if len(todo) > 1 else todo * 2
        verdicts: list[str] = []
        for shard in todo:
            try:
                verdict = await self._probe_window(shard)
            except ShardError as e:  # that shard's own fetch will report it
                log.info("day-window probe on %s failed: %s", shard.key, e)
                continue
            if verdict is None:
                continue
            verdicts.append(verdict)
            if verdict == known or verdicts.count(verdict) >= 2:
                break
        agreed = next((v for v in verdicts if verdicts.count(v) >= 2), None)
        if agreed is None or agreed == known:
            # Not two agreeing probes (no data to tell by, or one lagging answer): keep what
            # the lake knows, else inclusive, as the docs' examples read; ask again next run.
            self.end_offset = 1 if known == "exclusive" else 0
            return
        self.end_offset = 1 if agreed == "exclusive" else 0
        if agreed == "exclusive":
            log.warning("the server treats end_date as exclusive: querying each day as D..D+1")
        if known is not None:
            log.warning("the server's reading of end_date changed from %s to %s", known, agreed)
        if record:
            self.lake.record_server_fact("end_date", agreed)

    async def _probe_window(self, shard: Shard) -> str | None:
        path = list_path(shard.scope, shard.account)
        d, d1 = shard.day, shard.day + dt.timedelta(days=1)

        async def total(start: dt.date, end: dt.date) -> int:
            params = list_params(start, self.cfg.filters, 1, 1, (end - start).days)
            what = f"shard {shard.key} day-window probe {start}..{end}"
            page = await self.client.get(path, params, lambda b: decode_page(b, 1, 1), what)
            return page.total

        a, c, b = await total(d, d), await total(d1, d1), await total(d, d1)
        if b == 0:
            return None
        if a == 0 and c == 0:
            return "exclusive"
        if b != a + c:
            log.warning("day-window probe inconclusive on %s: %d + %d != %d", shard.key, a, c, b)
            return None
        return "inclusive"

    async def _guarded(self, shard: Shard, mode: str) -> None:
        async with self._shard_sem:
            try:
                result = await self.do_shard(shard, mode)
            except ShardError as e:
                log.warning("shard %s failed: %s", shard.key, e)
                result = ShardResult(shard, "failed", "harvested", detail=str(e))
        self.stats.results.append(result)

    async def do_shard(self, shard: Shard, mode: str) -> ShardResult:
        prior = self._prior.get(shard.key)
        if mode == "skip":
            return ShardResult(shard, "skipped", "skipped", rows=int(prior["rows"]) if prior else 0)
        if mode == "recheck" and prior is not None:
            first = await self.page(shard, 1, self.cfg.per_page)
            same = first.total == prior.get("api_total") and first.summary == prior.get("api_summary")
            if same and prior.get("verified"):
                if prior.get("open_day") and shard.day < self.cfg.today:
                    await self._off_loop(self.lake.commit, shard, {**prior, "open_day": False})
                return ShardResult(shard, "unchanged", "rechecked", rows=int(prior["rows"]))
            log.info("shard %s changed since it was committed: re-harvesting", shard.key)
        action = "reharvested" if prior is not None else "harvested"
        got, first, verdict, pages, attempts = await self.fetch(shard)
        rows = got.rows if isinstance(got, (Streamed, Encoded)) else got.num_rows
        verified = verdict.ok(self.cfg.strict_sums)
        record = {
            "shard": shard.key,
            "scope": shard.scope,
            "account": shard.account,
            "date": shard.day.isoformat(),
            "file": self.lake.file_key(shard) if rows else None,
            "rows": rows,
            "pages": pages,
            "attempts": attempts,
            "api_total": first.total,
            "api_summary": first.summary,
            "sums": verdict.sums,
            "verified": verified,
            "sums_match": not verdict.sum_problems,
            "problems": verdict.problems + verdict.sum_problems,
            "open_day": shard.day >= self.cfg.today,
            "harvested_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }

        def store() -> int:  # the file, then the manifest that commits it
            if isinstance(got, Streamed):
                nbytes = got.staged.publish()
            elif isinstance(got, Encoded):
                nbytes = self.lake.write_shard_file(shard, got.data)
            else:
                nbytes = self.lake.write_shard(shard, got)
            # A first record may wait for the lake's next checkpoint; one that replaces
            # another must not be lost (the old one would then describe the new file).
            self.lake.commit(shard, {**record, "bytes": nbytes}, durable=prior is not None)
            return nbytes

        nbytes = await self._off_loop(store)
        self.stats.records += rows
        self.stats.bytes += nbytes
        status = "verified" if verified else "unverified"
        if not verified:
            log.warning("shard %s unverified: %s", shard.key, verdict.describe())
        elif verdict.sum_problems:
            log.info("shard %s: sums differ from summary (not strict): %s", shard.key, verdict.describe())
        return ShardResult(shard, status, action, rows, pages, nbytes, verdict.describe())

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking shard work (assembly, files, object stores) on the I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _assemble(self, table: Callable[[], pa.Table], shard: Shard) -> pa.Table:
        """A shard's table, deduplicated and in file order, built off the event loop."""
        by_account = shard.scope == "global"
        return await self._off_loop(lambda: order(dedupe(table()), by_account))

    async def _get(self, shard: Shard, n: int, per_page: int, decode: Callable[[bytes], T]) -> T:
        """Page ``n`` of a shard, decoded by ``decode`` (a page, or the raw body for the pool)."""
        params = list_params(shard.day, self.cfg.filters, n, per_page, self.end_offset)
        path = list_path(shard.scope, shard.account)
        return await self.client.get(path, params, decode, f"shard {shard.key} page {n}")

    async def page(self, shard: Shard, n: int, per_page: int) -> Page:
        page: Page | None = None
        if self.pool is not None and not self.pool.broken:
            body = await self._get(shard, n, per_page, check_shape)
            try:
                page = await self.pool.decode(body, n, per_page)
                self.stats.worker_pages += 1
            except DecodeError as e:  # fetched again, and decoded here with the client's retries
                log.info("shard %s page %d: %s; fetching it again", shard.key, n, e)
        if page is None:
            page = await self._get(shard, n, per_page, lambda body: decode_page(body, n, per_page))
        self.stats.pages += 1
        self.stats.fetched += page.rows
        return page

    async def fetch(self, shard: Shard) -> tuple[pa.Table | Streamed | Encoded, Page, Verdict, int, int]:
        """Fetch a whole shard, re-fetching until it verifies or attempts run out."""
        open_day = shard.day >= self.cfg.today
        attempts = max(1, self.cfg.verify_attempts)
        streamed = False  # a shard too large to hold is fetched again as a stream, not walked
        for attempt in range(1, attempts + 1):
            got: pa.Table | Streamed | Encoded
            problems: list[str] = []  # how pages contradicted page 1 on this attempt
            if open_day or (attempt > 1 and not streamed):
                got, first, pages = await self._walk(shard, problems)
            else:
                got, first, pages = await self._fan_out(shard, problems)
            if isinstance(got, (Streamed, Encoded)):
                missing = got.missing if isinstance(got, Encoded) else 0
                verdict = verify_counts(got.rows, got.sums, first.total, first.summary, missing, problems)
            else:
                verdict = verify(got, first.total, first.summary, problems)
            if verdict.ok(self.cfg.strict_sums) or attempt == attempts:
                return got, first, verdict, pages, attempt
            if isinstance(got, Streamed):
                streamed = True
                await self._off_loop(got.staged.discard)
            log.info("shard %s attempt %d: %s; fetching it again", shard.key, attempt, verdict.describe())
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    async def _fan_out(
        self, shard: Shard, problems: list[str]
    ) -> tuple[pa.Table | Streamed | Encoded, Page, int]:
        """Closed day: probe page 1, then the other pages through ``--concurrency`` lanes."""
        first: Page | None = None
        if self.pool is not None and not self.pool.broken:
            kept = await self._fan_out_kept(shard, self.pool.shard_job(), problems)
            if isinstance(kept, Page):
                first = kept  # too large to hold: streamed, starting from this page 1
            elif kept is not None:
                return kept
        if first is None:
            first = await self.page(shard, 1, self.cfg.per_page)
        if first.total > self.cfg.stream_rows:  # too large to hold: written as it arrives
            return await self._stream(shard, first, problems)
        got = Collector()
        got.add(first)
        _note(problems, contradiction(first, first, 1))
        await self._pages_into(got, shard, range(2, first.pages + 1), first, problems)
        return await self._assemble(got.table, shard), first, got.pages

    async def _fan_out_kept(
        self, shard: Shard, job: ShardJob, problems: list[str]
    ) -> tuple[Encoded, Page, int] | Page | None:
        """A closed day whose pages one decode worker keeps, joins and encodes: the loop only
        fetches. Page 1 decoded, when the shard is too large to hold (the caller streams it);
        None when a page or a worker fails (the caller fetches the shard page by page)."""
        try:
            body = await self._get(shard, 1, self.cfg.per_page, check_shape)
            first = await self._keep(job, body, 1, self.cfg.per_page)
            if first.total > self.cfg.stream_rows:
                return await self._decode_fetched(body, 1, self.cfg.per_page)
            _note(problems, contradiction(first, first, 1))
            numbers = range(2, first.pages + 1)

            async def keep(n: int) -> None:
                body = await self._get(shard, n, first.per_page, check_shape)
                _note(problems, contradiction(first, await self._keep(job, body, n, first.per_page), n))

            await self._lanes(numbers, keep, problems)
            encoded = await job.finish(by_account=shard.scope == "global")
        except DecodeError as e:
            log.info("shard %s: %s; fetching it again page by page", shard.key, e)
            return None
        finally:
            job.close()
        return encoded, first, 1 + len(numbers)

    async def _keep(self, job: ShardJob, body: bytes, n: int, per_page: int) -> Page:
        """Hand page ``n``'s body to the job's worker; its numbers come back."""
        page = await job.keep(body, n, per_page)
        self.stats.pages += 1
        self.stats.worker_pages += 1
        self.stats.fetched += page.rows
        return page

    async def _decode_fetched(self, body: bytes, n: int, per_page: int) -> Page:
        """A page body already fetched, decoded by a worker or else here."""
        if self.pool is not None and not self.pool.broken:
            try:
                return await self.pool.decode(body, n, per_page)
            except DecodeError:
                pass
        return decode_page(body, n, per_page)

    async def _stream(
        self, shard: Shard, first: Page, problems: list[str]
    ) -> tuple[pa.Table | Streamed, Page, int]:
        """A closed day too large to hold: its pages fetched a window at a time, each window
        joined in page order and written as a row group while the next one is fetched.
        Memory holds two windows, not the shard; at most two shards stream at once (each keeps
        every request slot busy), so memory does not grow with the number of big customers."""
        async with self._streams:
            return await self._stream_pages(shard, first, problems)

    async def _stream_pages(
        self, shard: Shard, first: Page, problems: list[str]
    ) -> tuple[pa.Table | Streamed, Page, int]:
        per_page = first.per_page
        window = max(1, Collector.CHUNK // max(1, per_page))
        staged = await self._off_loop(self.lake.stage_shard, shard)
        # 64-bit hashes of the uuids written, for the distinct count: a third of the memory of
        # the uuids themselves and no hash table to build at the end. A collision can only make
        # a stream look repeated (and then be fetched again), never hide a repeat.
        seen: set[int] = set()
        sums: Counter[str] = Counter()
        written = 0
        writing: asyncio.Future[None] | None = None
        pages = 1
        try:
            got, n = Collector(), 2
            got.add(first)
            _note(problems, contradiction(first, first, 1))
            while True:
                upto = min(first.pages, window if n == 2 else n + window - 1)  # page 1 is in the first
                await self._pages_into(got, shard, range(n, upto + 1), first, problems)
                pages += upto + 1 - n
                table = await self._off_loop(got.table)  # the cast runs without the GIL
                if writing is not None:
                    await writing
                if table.num_rows:
                    writing = asyncio.ensure_future(self._off_loop(staged.write, table))
                    seen.update(map(hash, table.column("uuid").to_pylist()))
                    sums.update(table_sums(table))
                    written += table.num_rows
                if upto >= first.pages or problems:
                    break
                got, n = Collector(), upto + 1
            if writing is not None:
                await writing
            distinct = len(seen)
        except BaseException:
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)  # never close a file a thread is writing to
            staged.discard()
            raise
        if distinct != written:  # pages shifted under us: a file cannot be deduplicated in place
            staged.discard()
            repeats = written - distinct
            log.info("shard %s: %d rows repeat across pages; fetching it again", shard.key, repeats)
            problems.clear()
            return await self._walk(shard, problems)
        return Streamed(staged, written, dict(sums)), first, pages

    async def _pages_into(
        self, got: Collector, shard: Shard, numbers: range, first: Page, problems: list[str]
    ) -> None:
        """Fetch the given pages of a closed day into ``got``, each checked against page 1."""

        async def fetch(n: int) -> None:
            page = await self.page(shard, n, first.per_page)
            got.add(page)
            _note(problems, contradiction(first, page, n))

        await self._lanes(numbers, fetch, problems)

    async def _lanes(
        self, numbers: range, fetch: Callable[[int], Coroutine[Any, Any, None]], problems: list[str]
    ) -> None:
        """Fetch pages ``numbers`` through ``--concurrency`` lanes, each taking the next page
        number when its last is done: tasks and memory do not grow with what a server says
        ``pages`` is, and the lanes stop at the first page that contradicts page 1 (the rest
        of the shard cannot be trusted either)."""
        todo = iter(numbers)

        async def lane() -> None:
            for n in todo:
                if problems:
                    return
                await fetch(n)

        await _at_once(lane() for _ in range(min(self.cfg.concurrency, len(numbers))))

    async def _walk(self, shard: Shard, problems: list[str]) -> tuple[pa.Table, Page, int]:
        """Walk forward page by page, then re-probe and catch up until whole.

        A closed day (a retry) is walked to page 1's last page, each page checked against
        page 1. An open day's totals grow while it is walked: its walk follows the newest
        page's count, up to twice page 1's pages and ten more (a server whose count keeps
        growing past that is not walked for ever; the shard then does not verify)."""
        open_day = shard.day >= self.cfg.today
        got = Collector(track_uuids=True)
        assert got.seen is not None
        first = await self.page(shard, 1, self.cfg.per_page)
        per_page = first.per_page
        got.add(first)
        limit = first.pages * 2 + 10 if open_day else first.pages
        if not open_day:
            _note(problems, contradiction(first, first, 1))
        n, last = 2, first
        while n <= min(last.pages, limit) and not problems:
            last = await self.page(shard, n, per_page)
            got.add(last)
            if not open_day:
                _note(problems, contradiction(first, last, n))
            n += 1
        for _ in range(self.cfg.verify_attempts * 4):
            if problems:
                break
            probe = await self.page(shard, 1, per_page)
            fresh = got.add(probe)
            first = probe if open_day else first
            if len(got.seen) == probe.total:
                break
            # Calls arrived while we walked: they sit on the first pages. Walk on until a
            # page brings nothing new (or the end), then probe again.
            n = 2
            while n <= min(probe.pages, limit):
                new = got.add(await self.page(shard, n, per_page))
                fresh += new
                if new == 0:
                    break
                n += 1
            if fresh == 0:
                break  # nothing new arrived: this shortfall is not drift, catching up won't heal it
        return await self._assemble(got.table, shard), first, got.pages


def _note(problems: list[str], problem: str | None) -> None:
    """Keep the first few contradictions a shard's pages showed (one is enough to fail it)."""
    if problem is not None and len(problems) < 3:
        problems.append(problem)
        log.info("%s", problem)


async def _at_once(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines as one task group; the first failure cancels the rest and is raised
    as itself (the most meaningful one, see :func:`_first_error`), not as a group."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except ExceptionGroup as eg:
        raise _first_error(eg) from None


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    """The most meaningful exception of a task group: a fatal one before a shard-level one."""
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else flat.append(e)

    walk(eg)
    for e in flat:
        if isinstance(e, HarvestError) and not isinstance(e, ShardError):
            return e
    return flat[0]
