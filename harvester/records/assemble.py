"""A shard's rows as its file holds them: one row per uuid, in the API's own order.

Used where a shard is assembled: on the I/O threads, or in the decode worker that kept the
shard's pages.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def dedupe(table: pa.Table) -> pa.Table:
    """One row per uuid, keeping the greatest ``updated_at`` (order-independent)."""
    if table.num_rows < 2 or pc.count_distinct(table.column("uuid")).as_py() == table.num_rows:
        return table
    t = table.sort_by([("uuid", "ascending"), ("updated_at", "descending")])
    u = t.column("uuid").combine_chunks()
    differs = pc.fill_null(pc.not_equal(u[1:], u[:-1]), True)
    keep = pa.concat_arrays([pa.array([True]), differs])
    return t.filter(keep)


def order(table: pa.Table, by_account: bool = False) -> pa.Table:
    """A file's row order: newest first, as the API pages a day (ties by uuid); grouped by
    account first in a file of many accounts (the global feed). Pages joined in page order
    already are newest first, and then nothing is copied."""
    keys = [("start_time", "descending"), ("uuid", "ascending")]
    if by_account:
        return table.sort_by([("account_id", "ascending"), *keys])
    start = table.column("start_time")
    if table.num_rows < 2 or (
        start.null_count == 0 and pc.all(pc.greater_equal(start[:-1], start[1:])).as_py()
    ):
        return table
    return table.sort_by(keys)
