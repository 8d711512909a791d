"""How the server reads ``end_date``: inclusive or exclusive, learnt by probing.

The docs show whole-day ranges (``2026-03-01``..``2026-03-31``) but never say whether
``end_date`` is inclusive. A server that treats it as exclusive would answer every one-day
query with nothing, and every empty shard would "verify"; one read as exclusive by mistake
would store each day's calls twice. So the totals of day D, day D+1 and the range D..D+1
tell the two apart (three one-record requests), and one probe is never believed alone (a
server still filling a day answers a lagging total, which reads as exclusive): a reading is
recorded in the lake when two probes agree. A recorded "exclusive" is re-checked by each run
with one probe and changed only when two probes agree on "inclusive"; a recorded
"inclusive" cannot come from a lagging answer and is kept without a request.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence

from harvester.errors import ShardError
from harvester.records.shard import Shard

log = logging.getLogger("harvester.harvest.window")
INCLUSIVE, EXCLUSIVE = "inclusive", "exclusive"

Total = Callable[[Shard, dt.date, dt.date], Awaitable[int]]  # the API's total for start..end


async def probe(shard: Shard, total: Total) -> str | None:
    """One probe on ``shard``'s day: inclusive, exclusive, or None when it cannot tell."""
    d, d1 = shard.day, shard.day + dt.timedelta(days=1)
    a, c, b = await total(shard, d, d), await total(shard, d1, d1), await total(shard, d, d1)
    if b == 0:
        return None
    if a == 0 and c == 0:
        return EXCLUSIVE
    if b != a + c:
        log.warning("day-window probe inconclusive on %s: %d + %d != %d", shard.key, a, c, b)
        return None
    return INCLUSIVE


async def learn(known: str | None, candidates: Sequence[Shard], total: Total) -> tuple[str, bool]:
    """The reading to use now, and whether it is new and agreed (so worth recording).
    ``candidates`` are closed-day shards to probe, best first."""
    if known == INCLUSIVE:
        return INCLUSIVE, False
    todo = list(candidates[:4]) if len(candidates) > 1 else list(candidates) * 2
    verdicts: list[str] = []
    for shard in todo:
        try:
            verdict = await probe(shard, total)
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
        # Not two agreeing probes (no data to tell by, or one lagging answer): keep what the
        # lake knows, else inclusive, as the docs' examples read; ask again next run.
        return known or INCLUSIVE, False
    if agreed == EXCLUSIVE:
        log.warning("the server treats end_date as exclusive: querying each day as D..D+1")
    if known is not None:
        log.warning("the server's reading of end_date changed from %s to %s", known, agreed)
    return agreed, True
