"""One run over one lake, in this order: accounts → plan → day window → for each shard:
fetch → verify → stage → commit; and once a day's shards are all done, fold the day (its
file takes in the committed shards, which become visible).

Shards run through ``--concurrency + 4`` lanes that take the next planned shard when their
last is done, so tasks do not grow with the plan. Each shard ends in one
:class:`ShardResult`; a :class:`~harvester.errors.ShardError` fails that shard only, and any
other error ends the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harvester.api.accounts import discover_accounts
from harvester.api.client import Client
from harvester.config import HarvestConfig
from harvester.errors import ShardError, UsageError, shown
from harvester.harvest import feed, window
from harvester.harvest.fetch import Fetched, Fetcher, at_once
from harvester.harvest.plan import RECHECK, SKIP, Planned, manifest_days, plan
from harvester.harvest.pool import DecodePool
from harvester.harvest.results import RunStats, ShardResult, manifest_record
from harvester.lake.lake import Lake
from harvester.records.shard import Shard

log = logging.getLogger("harvester.harvest.engine")


class Harvester:
    """One run over one lake."""

    def __init__(
        self, cfg: HarvestConfig, client: Client, lake: Lake, pool: DecodePool | None = None
    ) -> None:
        self.cfg, self.client, self.lake = cfg, client, lake
        self.stats = RunStats()
        self._prior: dict[str, dict[str, Any]] = {}  # manifest records of the planned days
        self.known: set[str] = set()  # the customers of the run's listing
        self._accounts: list[str | None] = []
        self._feed = False  # partner days read through the partner feed
        self._left: Counter[dt.date] = Counter()  # shards of each day not yet done
        self._unfolded: set[dt.date] = set()  # days with committed shards not in their file
        self._failed: dict[dt.date, dict[str, str]] = {}
        self._cleared: dict[dt.date, set[str]] = {}
        # Shard assembly and file writes run here, off the event loop: two threads keep both
        # cores of a local disk busy; an object store's uploads wait on the network.
        self._io = ThreadPoolExecutor(2 if lake.store.local else 6, thread_name_prefix="shard-io")
        self.fetcher = Fetcher(cfg, client, lake, pool, self._io)
        self._may_start_workers = pool is None and cfg.workers > 0  # see _workers_if_busy
        self._own_pool: DecodePool | None = None

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

    async def prepare(self) -> None:
        """Accounts, the planned days' manifest, and how to read them (the partner feed or
        one customer at a time): what :meth:`planned` needs."""
        self._accounts = await self.accounts()
        self.known = {a for a in self._accounts if a}
        self.stats.accounts = len(self.known)
        records = self.lake.manifest(manifest_days(self.cfg))
        self._prior = {str(rec.get("shard")): rec for rec in records}
        if feed.wanted(self.cfg) and self.known:
            fact = self.lake.identity.server_fact("feed")
            self._feed, why = await feed.choose(self.cfg, self.fetcher.pages, self.known, self._prior, fact)
            if why:
                log.warning("reading customers one at a time: the partner feed cannot be used (%s)", why)
                self.stats.fetch_note = why

    def planned(self, use_feed: bool | None = None) -> Iterator[Planned]:
        """Every shard with its mode, a day at a time (see :func:`harvester.harvest.plan.plan`);
        ``use_feed`` overrides how :meth:`prepare` chose to read partner days."""
        return plan(self.cfg, self._accounts, self._prior, feed=self._feed if use_feed is None else use_feed)

    async def learn_window(self, record: bool) -> None:
        """Set how ``end_date`` is read (see :mod:`harvester.harvest.window`)."""
        today = self.cfg.today
        older: list[Shard] = []  # closed before yesterday: their totals are settled
        recent: list[Shard] = []
        for p in self.planned():
            if p.mode != SKIP and p.shard.day < today:
                (older if p.shard.day + dt.timedelta(days=1) < today else recent).append(p.shard)
                if len(older) >= 4:
                    break
        candidates = (older + recent)[:4]
        known = self.lake.identity.server_fact("end_date")
        reading, new = await window.learn(
            known if known in (window.INCLUSIVE, window.EXCLUSIVE) else None,
            candidates,
            self.fetcher.pages.total,
        )
        self.fetcher.pages.end_offset = 1 if reading == window.EXCLUSIVE else 0
        if new and record:
            self.lake.identity.record_server_fact("end_date", reading)

    async def run(self) -> RunStats:
        await self.prepare()
        self.stats.shards_planned = sum(1 for _ in self.planned())
        await self.learn_window(record=True)
        self._unfolded = set(self.lake.staged_days())  # a stopped run's committed shards

        def by_day() -> Iterator[Planned]:
            """The plan, each day's shards counted before its first starts (see _fold)."""
            for day, group in itertools.groupby(self.planned(), key=lambda p: p.shard.day):
                shards = list(group)
                self._left[day] += len(shards)
                if any(p.shard.scope == "global" for p in shards) and self.cfg.scope == "partner":
                    self.stats.fetch = "global"
                yield from shards

        todo = by_day()
        if self.cfg.scope == "partner":
            self.stats.fetch = "per-customer"

        async def lane() -> None:
            for p in todo:
                await self._guarded(p)

        try:
            await at_once(lane() for _ in range(min(self.stats.shards_planned, self.cfg.concurrency + 4)))
            for day in sorted(self._unfolded - set(self._left)):  # days this run did not plan
                await self._fold(day)
        finally:
            self._io.shutdown(wait=True, cancel_futures=True)
            if self._own_pool is not None:
                self._own_pool.close()
        return self.stats

    @property
    def decode_processes(self) -> int:
        """The decode processes this run has used (0: every page was decoded on the loop)."""
        return self.fetcher.pool.workers if self.fetcher.pool is not None else 0

    async def _workers_if_busy(self) -> None:
        """Start the decode workers once requests come fast enough for them to pay
        (:meth:`HarvestConfig.workers_at`): a run with ``--decode-workers auto`` whose rate
        starts low (``--rate auto``) and climbs. Once a run; they stop when it ends."""
        if not self._may_start_workers or not self.cfg.workers_at(self.client.pacer.rate):
            return
        self._may_start_workers = False
        log.info("requests at %s/s: starting %d decode workers", self.client.pacer.rate, self.cfg.workers)
        starting = asyncio.get_running_loop().run_in_executor(None, DecodePool, self.cfg.workers)
        try:
            self._own_pool = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the run stops meanwhile: stop the pool once it is up
            starting.add_done_callback(_close_pool)
            raise
        self.fetcher.use(self._own_pool)

    async def _guarded(self, p: Planned) -> None:
        await self._workers_if_busy()
        try:
            result = await self.do_shard(p.shard, p.mode)
        except ShardError as e:
            log.warning("shard %s failed: %s", p.shard.key, e)
            result = ShardResult(p.shard, "failed", "harvested", detail=str(e))
        self.stats.add(result)
        day = p.shard.day
        if result.status == "failed":
            self._failed.setdefault(day, {})[p.shard.who] = result.detail
            self._unfolded.add(day)
        else:
            self._cleared.setdefault(day, set()).add(p.shard.who)
            if result.action != "skipped":
                self._unfolded.add(day)
        self._left[day] -= 1
        if self._left[day] == 0 and day in self._unfolded:
            await self._fold(day)

    async def _fold(self, day: dt.date) -> None:
        """The day's shards are all done: its file takes in what was committed (the rows
        become visible now), and its manifest records what failed."""
        failed, cleared = self._failed.pop(day, {}), self._cleared.pop(day, set())
        try:
            if await self.fetcher.off_loop(self.lake.fold, day, failed, cleared):
                self.stats.days_folded += 1
        except ShardError as e:
            log.warning("day %s: its file was not rewritten: %s", day, e)
            self.stats.fold_failed[day.isoformat()] = str(e)
        self._unfolded.discard(day)

    async def do_shard(self, shard: Shard, mode: str) -> ShardResult:
        """One shard, start to end: skip, re-check, or fetch → verify → publish → commit."""
        prior = self._prior.get(shard.key)
        if mode == SKIP:
            return ShardResult(shard, "skipped", "skipped", rows=int(prior["rows"]) if prior else 0)
        if mode == RECHECK and prior is not None and not prior.get("file_missing"):
            first = await self.fetcher.pages.numbers(shard)
            same = first.total == prior.get("api_total") and first.summary == prior.get("api_summary")
            if same and prior.get("verified"):
                if prior.get("open_day") and shard.day < self.cfg.today:
                    # The record alone changes: its rows stay where they are (in the day's file
                    # when that is where the record points, else in the staging area).
                    in_day = str(prior.get("file") or "").startswith("date=")
                    record = {k: v for k, v in prior.items() if k != "file_missing"}
                    await self.fetcher.off_loop(
                        self.lake.commit, shard, {**record, "open_day": False, "in_day": in_day}
                    )
                return ShardResult(shard, "unchanged", "rechecked", rows=int(prior["rows"]))
            log.info("shard %s changed since it was committed: re-harvesting", shard.key)
        fetched = await self.fetcher.fetch(shard)  # verified, not yet written
        if shard.scope == "global" and self.cfg.scope == "partner":
            odd = feed.strangers(fetched.accounts, self.known)
            if odd:  # records no customer owns: not committed, and the next run reads customers
                if fetched.staged is not None:
                    await self.fetcher.off_loop(fetched.staged.discard)
                await self.fetcher.off_loop(
                    self.lake.identity.record_server_fact, "feed", feed.UNATTRIBUTABLE
                )
                raise ShardError(feed.unattributed_error(shard.day, odd))
        nbytes = await self.fetcher.off_loop(self._publish, shard, fetched)
        verdict = fetched.verdict
        self.stats.records += fetched.rows
        self.stats.bytes += nbytes
        verified = verdict.ok(self.cfg.strict_sums)
        if not verified:
            log.warning("shard %s unverified: %s", shard.key, verdict.describe())
        elif verdict.sum_problems:
            log.info("shard %s: sums differ from summary (not strict): %s", shard.key, verdict.describe())
        action = "reharvested" if prior is not None else "harvested"
        status = "verified" if verified else "unverified"
        return ShardResult(shard, status, action, fetched.rows, fetched.pages, nbytes, verdict.describe())

    def _publish(self, shard: Shard, fetched: Fetched) -> int:
        """On an I/O thread: the shard's file appears whole, then its manifest record commits
        it (the record is durable when this returns). Returns the file's bytes."""
        rows = next(r for r in (fetched.staged, fetched.data, fetched.table) if r is not None)
        nbytes = self.lake.write_file(shard, rows)
        record = manifest_record(shard, fetched, self.lake.file_key(shard), self.cfg)
        self.lake.commit(shard, {**record, "bytes": nbytes})
        return nbytes


def _close_pool(starting: asyncio.Future[DecodePool]) -> None:
    if not starting.cancelled() and starting.exception() is None:
        starting.result().close()
