"""Fetching one shard until it verifies: every strategy ends in one :class:`Fetched`, staged
and not yet visible to any reader.

* A closed day is probed (page 1 gives ``pagination.pages``) and its other pages are fetched
  through ``--concurrency`` lanes, each checked against page 1. With decode workers, the loop
  writes each page body to a scratch file as it arrives (:class:`~harvester.harvest.pool.Spill`,
  ~1.1 MB per 1,000 records) and a worker turns them into the shard's file, holding the
  day's rows while it sorts and encodes them (at most two ``--stream-rows`` of rows across
  shards, see :meth:`Fetcher._holding`).
* A closed day of more than ``--stream-rows`` records is written to a staged file a window of
  pages at a time, so memory holds two windows, not the shard.
* A day that is still open (the current UTC day), and any retry, is walked page by page,
  then re-probed and caught up until the distinct uuids match the latest total: newest-first
  pages shift while calls arrive, so a parallel fetch would miss records.

A fetched shard is verified (:mod:`harvester.records.verify`) and fetched again, up to
``--verify-attempts`` times, until it verifies; the last attempt is returned either way,
with its verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import pyarrow as pa

from harvester.api.client import Client
from harvester.config import HarvestConfig
from harvester.errors import DecodeError, HarvestError, ShardError
from harvester.harvest.pages import PageSource
from harvester.harvest.pool import DecodePool
from harvester.lake.lake import Lake
from harvester.lake.store import StagedTable
from harvester.records.assemble import dedupe, order
from harvester.records.decode import Collector, Page
from harvester.records.shard import Shard
from harvester.records.verify import (
    Verdict,
    accounts_in,
    contradiction,
    missing_uuids,
    table_sums,
    verify_counts,
)

log = logging.getLogger("harvester.harvest.fetch")
T = TypeVar("T")


@dataclass
class Fetched:
    """A shard's rows, fetched and verified but not yet visible: in memory (``table``), encoded
    by a decode worker (``data``, the Parquet file's bytes), or in a staged file (``staged``,
    for a shard too large to hold) that appears on publish."""

    first: Page  # the page 1 the shard was verified against
    verdict: Verdict
    pages: int
    attempts: int = 1
    table: pa.Table | None = None
    data: bytes | None = None
    staged: StagedTable | None = None
    accounts: frozenset[str | None] = frozenset()  # the distinct account_id of its rows

    @property
    def rows(self) -> int:
        return self.verdict.rows


class Fetcher:
    """Fetches shards for one run: one client, an optional decode pool, the I/O threads."""

    def __init__(
        self, cfg: HarvestConfig, client: Client, lake: Lake, pool: DecodePool | None, io: Executor
    ) -> None:
        self.cfg, self.lake, self.io = cfg, lake, io
        self.pages = PageSource(cfg, client, pool)
        self._streams = asyncio.Semaphore(2)  # shards streaming to their files at once
        # Closed-day shards held in memory at once (see _holding): a day of the partner feed
        # holds many customers' rows, and the lanes would otherwise hold several.
        self._held_rows = 0
        self._held_shards = 0
        self._room = asyncio.Condition()

    @property
    def pool(self) -> DecodePool | None:
        """The decode pool its pages go to (:attr:`PageSource.pool`)."""
        return self.pages.pool

    def use(self, pool: DecodePool) -> None:
        """Decode with ``pool`` from the next page on (a pool started mid-run)."""
        self.pages.pool = pool

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking shard work (assembly, files, object stores) on the I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # -- one shard --------------------------------------------------------------------------
    async def fetch(self, shard: Shard) -> Fetched:
        """The shard, fetched again until it verifies or ``--verify-attempts`` run out."""
        open_day = shard.day >= self.cfg.today
        attempts = max(1, self.cfg.verify_attempts)
        streamed = False  # a shard too large to hold is fetched again as a stream, not walked
        for attempt in range(1, attempts + 1):
            problems: list[str] = []  # how pages contradicted page 1 on this attempt
            if open_day or (attempt > 1 and not streamed):
                got = await self._walk(shard, problems)
            else:
                got = await self._fan_out(shard, problems)
            got.attempts = attempt
            if got.verdict.ok(self.cfg.strict_sums) or attempt == attempts:
                return got
            if got.staged is not None:
                streamed = True
                await self.off_loop(got.staged.discard)
            log.info("shard %s attempt %d: %s; fetching it again", shard.key, attempt, got.verdict.describe())
            await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    async def _verified(self, got: Collector, shard: Shard, first: Page, problems: list[str]) -> Fetched:
        """A shard's pages joined, deduplicated and ordered (off the loop), and verified."""
        by_account = shard.scope == "global"
        table = await self.off_loop(lambda: order(dedupe(got.table()), by_account))
        sums, missing = table_sums(table), missing_uuids(table)
        verdict = verify_counts(table.num_rows, sums, first.total, first.summary, missing, problems)
        return Fetched(first, verdict, got.pages, table=table, accounts=accounts_in(table))

    async def _fan_out(self, shard: Shard, problems: list[str]) -> Fetched:
        """Closed day: probe page 1, then the other pages through the lanes."""
        first, body = await self.pages.page_and_body(shard, 1, self.cfg.per_page)
        if first.total > self.cfg.stream_rows:  # too large to hold: written as it arrives
            async with self._streams:
                return await self._stream(shard, first, problems)
        async with self._holding(first.total):
            if body is not None and first.pages > 1:
                encoded = await self._encoded(shard, first, body, problems)
                if encoded is not None:
                    return encoded
            got = Collector()
            got.add(first)
            _note(problems, contradiction(first, first, 1))
            await self._pages_into(got, shard, range(2, first.pages + 1), first, problems)
            return await self._verified(got, shard, first, problems)

    @contextlib.asynccontextmanager
    async def _holding(self, rows: int) -> AsyncIterator[None]:
        """Room for ``rows`` held in memory: small shards share one ``--stream-rows`` of rows,
        and two shards are held whatever their size (up to ``--stream-rows`` each), so that
        one is fetched while the other is encoded: at most ``2 × --stream-rows`` in all."""

        def room() -> bool:
            return self._held_shards < 2 or self._held_rows + rows <= self.cfg.stream_rows

        async with self._room:
            await self._room.wait_for(room)
            self._held_rows += rows
            self._held_shards += 1
        try:
            yield
        finally:
            async with self._room:
                self._held_rows -= rows
                self._held_shards -= 1
                self._room.notify_all()

    async def _encoded(self, shard: Shard, first: Page, body: bytes, problems: list[str]) -> Fetched | None:
        """A closed day whose page bodies a decode worker turns into its file: the loop only
        fetches, spilling each body to a scratch file the worker reads (each page checked
        against page 1 once the worker has read it). None when the worker (or the scratch
        file) fails: the caller fetches the pages again, decoding them itself."""
        assert self.pool is not None
        try:
            spill = self.pool.spill()
            try:
                spill.add(1, body)

                async def one(n: int) -> None:
                    spill.add(n, await self.pages.body(shard, n, first.per_page))

                await self._lanes(range(2, first.pages + 1), one, problems)
                enc = await self.pool.encode(spill, first.per_page, shard.scope == "global", shard.who)
            finally:
                spill.close()
        except DecodeError as e:
            log.info("shard %s: %s; decoding its pages here", shard.key, e)
            return None
        for n, page in enumerate(enc.pages[1:], start=2):
            self.pages.count(page, in_worker=True)
            _note(problems, contradiction(first, page, n))
        verdict = verify_counts(enc.rows, enc.sums, first.total, first.summary, enc.missing, problems)
        return Fetched(first, verdict, len(enc.pages), data=enc.data, accounts=enc.accounts)

    async def _stream(self, shard: Shard, first: Page, problems: list[str]) -> Fetched:
        """A closed day too large to hold: its pages fetched a window at a time, each window
        joined in page order and written as a row group while the next one is fetched."""
        window = max(1, Collector.CHUNK // max(1, first.per_page))
        staged = await self.off_loop(self.lake.stage_shard, shard)
        # 64-bit hashes of the uuids written, for the distinct count: a third of the memory of
        # the uuids themselves. A collision can only make a stream look repeated (and then be
        # fetched again), never hide a repeat.
        seen: set[int] = set()
        sums: Counter[str] = Counter()
        accounts: set[str | None] = set()
        written, missing, pages = 0, 0, 1
        writing: asyncio.Future[None] | None = None
        try:
            got, n = Collector(), 2
            got.add(first)
            _note(problems, contradiction(first, first, 1))
            while True:
                upto = min(first.pages, window if n == 2 else n + window - 1)  # page 1 is in the first
                await self._pages_into(got, shard, range(n, upto + 1), first, problems)
                pages += upto + 1 - n
                table = await self.off_loop(got.table)  # the cast runs without the GIL
                if writing is not None:
                    await writing
                if table.num_rows:
                    writing = asyncio.ensure_future(self.off_loop(staged.write, table))
                    seen.update(map(hash, table.column("uuid").to_pylist()))
                    sums.update(table_sums(table))
                    written += table.num_rows
                    missing += missing_uuids(table)
                    accounts |= accounts_in(table)
                if upto >= first.pages or problems:
                    break
                got, n = Collector(), upto + 1
            if writing is not None:
                await writing
        except BaseException:
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)  # never close a file a thread is writing to
            staged.discard()
            raise
        if len(seen) != written or missing:  # repeats or rows without a uuid: walk it instead
            staged.discard()
            log.info("shard %s: %d rows repeat across pages; walking it", shard.key, written - len(seen))
            problems.clear()
            return await self._walk(shard, problems)
        verdict = verify_counts(written, dict(sums), first.total, first.summary, 0, problems)
        return Fetched(first, verdict, pages, staged=staged, accounts=frozenset(accounts))

    async def _pages_into(
        self, got: Collector, shard: Shard, numbers: range, first: Page, problems: list[str]
    ) -> None:
        """Fetch the given pages of a closed day into ``got``, each checked against page 1."""

        async def one(n: int) -> None:
            page = await self.pages.page(shard, n, first.per_page)
            got.add(page)
            _note(problems, contradiction(first, page, n))

        await self._lanes(numbers, one, problems)

    async def _lanes(
        self, numbers: range, fetch: Callable[[int], Coroutine[Any, Any, None]], problems: list[str]
    ) -> None:
        """Fetch pages ``numbers`` through ``--concurrency`` lanes, each taking the next page
        number when its last is done: tasks and memory do not grow with what a server says
        ``pages`` is, and the lanes stop at the first page that contradicts page 1."""
        todo = iter(numbers)

        async def lane() -> None:
            for n in todo:
                if problems:
                    return
                await fetch(n)

        await at_once(lane() for _ in range(min(self.cfg.concurrency, len(numbers))))

    async def _walk(self, shard: Shard, problems: list[str]) -> Fetched:
        """Walk forward page by page, then re-probe and catch up until whole.

        A closed day (a retry) is walked to page 1's last page, each page checked against
        page 1. An open day's totals grow while it is walked: its walk follows the newest
        page's count, up to twice page 1's pages and ten more (a server whose count keeps
        growing past that is not walked for ever; the shard then does not verify)."""
        open_day = shard.day >= self.cfg.today
        got = Collector(track_uuids=True)
        assert got.seen is not None
        first = await self.pages.page(shard, 1, self.cfg.per_page)
        per_page = first.per_page
        got.add(first)
        limit = first.pages * 2 + 10 if open_day else first.pages
        if not open_day:
            _note(problems, contradiction(first, first, 1))
        n, last = 2, first
        while n <= min(last.pages, limit) and not problems:
            last = await self.pages.page(shard, n, per_page)
            got.add(last)
            if not open_day:
                _note(problems, contradiction(first, last, n))
            n += 1
        for _ in range(self.cfg.verify_attempts * 4):
            if problems:
                break
            probe = await self.pages.page(shard, 1, per_page)
            fresh = got.add(probe)
            first = probe if open_day else first
            if len(got.seen) == probe.total:
                break
            # Calls arrived while we walked: they sit on the first pages. Walk on until a
            # page brings nothing new (or the end), then probe again.
            n = 2
            while n <= min(probe.pages, limit):
                new = got.add(await self.pages.page(shard, n, per_page))
                fresh += new
                if new == 0:
                    break
                n += 1
            if fresh == 0:
                break  # nothing new arrived: this shortfall is not drift, catching up won't heal it
        return await self._verified(got, shard, first, problems)


def _note(problems: list[str], problem: str | None) -> None:
    """Keep the first few contradictions a shard's pages showed (one is enough to fail it)."""
    if problem is not None and len(problems) < 3:
        problems.append(problem)
        log.info("%s", problem)


async def at_once(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines as one task group; the first failure cancels the rest and is raised
    as itself, a fatal error before a shard-level one (not as an exception group)."""
    try:
        async with asyncio.TaskGroup() as tg:
            for coro in coros:
                tg.create_task(coro)
    except ExceptionGroup as eg:
        raise _first_error(eg) from None


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    flat: list[BaseException] = []

    def walk(g: BaseExceptionGroup) -> None:
        for e in g.exceptions:
            walk(e) if isinstance(e, BaseExceptionGroup) else flat.append(e)

    walk(eg)
    for e in flat:
        if isinstance(e, HarvestError) and not isinstance(e, ShardError):
            return e
    return flat[0]
