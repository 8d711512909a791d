"""What a run's steps end in: one :class:`ShardResult` per shard, the run's
:class:`RunStats`, and a committed shard's manifest record."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harvester.config import HarvestConfig
from harvester.harvest.fetch import Fetched
from harvester.records.shard import Shard


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
    """What the report needs, filled in while the run goes (``fetch`` counts pages)."""

    shards_planned: int = 0
    records: int = 0  # records committed to the lake
    bytes: int = 0
    done: int = 0  # shards ended
    counts: Counter[str] = field(default_factory=Counter)  # by status, and by "action:…"
    problems: list[ShardResult] = field(default_factory=list)  # the failed and unverified
    accounts: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # listed ids that cannot be harvested
    stopped: str | None = None
    fetch: str = ""  # partner scope: "global" (the partner feed) or "per-customer"
    fetch_note: str = ""  # why the feed was not used, when it was wanted
    days_folded: int = 0  # day files rewritten
    fold_failed: dict[str, str] = field(default_factory=dict)  # day → why its file was not rewritten

    def add(self, r: ShardResult) -> None:
        """Count a shard's end; keep it only when it failed or is unverified (memory follows
        the problems, not the plan)."""
        self.done += 1
        self.counts[r.status] += 1
        self.counts[f"action:{r.action}"] += 1
        if r.status in ("failed", "unverified"):
            self.problems.append(r)


def manifest_record(shard: Shard, fetched: Fetched, staged_key: str, cfg: HarvestConfig) -> dict[str, Any]:
    """A committed shard's record (the shape a lake's readers and re-runs rely on)."""
    verdict = fetched.verdict
    return {
        "shard": shard.key,
        "scope": shard.scope,
        "account": shard.account,
        "date": shard.day.isoformat(),
        "file": staged_key if fetched.rows else None,
        "rows": fetched.rows,
        "pages": fetched.pages,
        "attempts": fetched.attempts,
        "api_total": fetched.first.total,
        "api_summary": fetched.first.summary,
        "sums": verdict.sums,
        "verified": verdict.ok(cfg.strict_sums),
        "sums_match": not verdict.sum_problems,
        "problems": verdict.problems + verdict.sum_problems,
        "open_day": shard.day >= cfg.today,
        "harvested_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
