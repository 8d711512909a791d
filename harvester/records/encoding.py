"""How a shard's rows are encoded as Parquet: the one write policy every file of the lake
follows, and the in-memory encoder that applies it."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harvester.records.schema import SCHEMA

# Low-cardinality columns only: dictionary-encoding uuids and numbers is wasted work per file.
DICTIONARY_COLUMNS = [
    "account_id",
    "call_direction",
    "currency",
    "hangup_cause",
    "hangup_cause_name",
    "hangup_disposition",
    "hangup_source",
    "failure_code",
    "failure_reason",
    "sip_user_agent",
    "codec",
    "context",
    "region",
    "origination_region",
    "trunk_id",
    "campaign_id",
]

# Integers and timestamps are delta-encoded (a day's times and ids are close together): smaller
# than zstd over plain values, and cheaper. zstd for the text and floats, where it pays;
# dictionary-encoded columns are a few bytes of indices per page that zstd does not shrink.
DELTA_COLUMNS = [f.name for f in SCHEMA if pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)]
COMPRESSION = {
    f.name: "none" if f.name in [*DICTIONARY_COLUMNS, *DELTA_COLUMNS, "_extra"] else "zstd" for f in SCHEMA
}
# Min/max statistics where a reader can prune with them: numbers, timestamps, and account_id
# (a global-feed file is ordered by account). Text such as uuids, phone numbers and names
# spans nearly its whole range in every file, so its statistics would never skip a row group
# and only cost encoding time and bytes.
STATISTICS_COLUMNS = [f.name for f in SCHEMA if not pa.types.is_string(f.type)] + ["account_id"]
WRITE_OPTIONS: dict[str, Any] = {
    "compression": COMPRESSION,
    "column_encoding": dict.fromkeys(DELTA_COLUMNS, "DELTA_BINARY_PACKED"),
    "row_group_size": 128 * 1024,
    "coerce_timestamps": "us",
    "allow_truncated_timestamps": False,
    "use_dictionary": DICTIONARY_COLUMNS,
    "write_statistics": STATISTICS_COLUMNS,
}


def parquet_bytes(table: pa.Table, **options: Any) -> pa.Buffer:
    """A whole Parquet file in memory: encoding a small file straight to disk costs a system
    call per page header and column chunk, about a third of the time of writing it."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **{**WRITE_OPTIONS, **options})
    return sink.getvalue()
