"""What a run does with each shard, decided from the settings and the manifest alone (a pure
function: no request, no I/O).

* ``harvest``: never committed, not verified, its file gone from the lake, or ``--refresh``;
* ``recheck``: committed, but in the ``--lookback`` days or committed while its day was
  open: page 1 is asked again and the shard re-harvested only if the API's numbers changed;
* ``skip``: committed and verified on a closed day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harvester.config import HarvestConfig
from harvester.records.shard import Shard, days, part_of, shards_for

HARVEST, RECHECK, SKIP = "harvest", "recheck", "skip"


@dataclass(frozen=True)
class Planned:
    """A shard and what this run does with it."""

    shard: Shard
    mode: str


def span_of(cfg: HarvestConfig) -> list[dt.date]:
    """The days a run covers: ``--start-date`` less ``--lookback`` days, to ``--end-date``."""
    return list(days(cfg.start_date - dt.timedelta(days=cfg.lookback), cfg.end_date))


def plan(
    cfg: HarvestConfig,
    accounts: Sequence[str | None],
    prior: Mapping[str, Mapping[str, Any]],
    feed: bool = False,
) -> Iterator[Planned]:
    """Every shard of the run with its mode, a day at a time, newest day first (a generator:
    memory holds one day's shards, not the plan). ``prior`` maps a shard's key to its
    manifest record (those of :func:`manifest_days`).

    With ``feed`` (partner scope, read through the partner feed), a day is one shard of the
    global feed, unless the day already holds customer shards and no feed shard (a run of
    customer shards stopped half-way goes on with them: nothing committed is fetched again)."""
    span = set(span_of(cfg))
    # A shard harvested while its day was open is never final: re-check it every run.
    scopes = {cfg.scope, "global"} if cfg.scope == "partner" else {cfg.scope}
    reopen: dict[dt.date, list[Shard]] = {}
    for rec in prior.values():
        if rec.get("open_day") and rec.get("scope") in scopes and not cfg.refresh:
            day = dt.date.fromisoformat(str(rec["date"]))
            reopen.setdefault(day, []).append(Shard(day, str(rec["scope"]), rec.get("account")))
    for day in sorted(span | set(reopen), reverse=True):
        yield from _day(cfg, day, day in span, accounts, prior, feed, reopen.get(day, []))


def _day(
    cfg: HarvestConfig,
    day: dt.date,
    planned: bool,
    accounts: Sequence[str | None],
    prior: Mapping[str, Mapping[str, Any]],
    feed: bool,
    reopen: list[Shard],
) -> Iterator[Planned]:
    """One day's shards with their modes (see :func:`plan`): built when the day's turn comes,
    and gone before the next day's are built."""
    group: dict[Shard, str] = {}
    if planned:
        feed_shard = Shard(day, "global", None)
        shards = shards_for(cfg.scope, accounts, [day])
        if feed and (feed_shard.key in prior or not any(s.key in prior for s in shards)):
            shards = [feed_shard]
        for shard in shards:
            group[shard] = _mode(prior.get(shard.key), cfg.refresh, in_lookback=day < cfg.start_date)
    for shard in reopen:
        group.setdefault(shard, RECHECK)
    for shard in sorted(group, key=lambda s: s.who, reverse=True):
        if cfg.partition is None or part_of(shard.key, cfg.partition[1]) == cfg.partition[0]:
            yield Planned(shard, group[shard])


def _mode(rec: Mapping[str, Any] | None, refresh: bool, in_lookback: bool) -> str:
    if rec is None or refresh or rec.get("file_missing"):
        return HARVEST
    if rec.get("open_day") or in_lookback:
        return RECHECK
    return SKIP if rec.get("verified") else HARVEST


OPEN_DAYS_BACK = 7  # a shard committed while its day was open is found this many days later


def manifest_days(cfg: HarvestConfig) -> list[dt.date]:
    """The days whose manifest a run reads: the planned span, and the last week (where a
    shard committed while its day was still open waits to be re-checked). Never the whole
    lake: a nightly run costs the same over a lake of a year as over one of a week."""
    span = set(span_of(cfg))
    span |= set(days(cfg.today - dt.timedelta(days=OPEN_DAYS_BACK), cfg.today))
    return sorted(span)
