"""A shard: one day of one account's CDRs (or of the global feed), the smallest unit the
API filters on. Shards are fetched, verified, written and committed on their own, which
gives parallelism, resume and idempotence."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Shard:
    """One day of one account's CDRs (``account`` None = the global partner feed)."""

    day: dt.date
    scope: str
    account: str | None

    @property
    def who(self) -> str:
        return self.account or "global"

    @property
    def key(self) -> str:
        return f"{self.day.isoformat()}/{self.who}"

    @property
    def file_name(self) -> str:
        return f"cdr-{self.who}.parquet"


def days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    """Every day from ``start`` to ``end``, inclusive."""
    d = start
    while d <= end:
        yield d
        d += dt.timedelta(days=1)


def shards_for(scope: str, accounts: Iterable[str | None], span: Iterable[dt.date]) -> list[Shard]:
    """The cross product, newest day first (recent data lands first)."""
    span = list(span)
    accounts = list(accounts)
    return [Shard(day, scope, acc) for day in sorted(span, reverse=True) for acc in accounts]


def part_of(shard_key: str, parts: int) -> int:
    """Which of ``parts`` disjoint parts of a plan a shard belongs to: a stable hash of its
    key (``day/who``), the same on every machine and in every run. Hashing customer × day, not
    customers, spreads a busy customer's days over every part, so parts are balanced by work."""
    digest = hashlib.sha256(shard_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % parts


_SHARD_FILE = re.compile(
    r"(?:_manifest/|_staging/)?date=(\d{4}-\d{2}-\d{2})/(?:cdr-)?(.+?)\.(?:parquet|json|staged)"
)


def shard_key_of(lake_key: str) -> str | None:
    """The shard key (``day/who``) a lake key (its staged file or record, or a file or
    record of the earlier one-file-per-shard layout) belongs to."""
    m = _SHARD_FILE.fullmatch(lake_key)
    return f"{m.group(1)}/{m.group(2)}" if m else None
