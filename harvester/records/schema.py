"""The one Arrow schema of a CDR row: the 43 documented fields plus ``_extra``.

Types follow what the API actually sends where the docs disagree with the data: ``jitter``
is typed integer but arrives as ``0.2`` (float64 here), ``failure_code`` is a string like
``"16"``, ``campaign_id``/``carrier_ip``/``customer_endpoint`` are untyped (string here).
Timestamps are ``timestamp[us, UTC]``: Spark cannot read nanosecond Parquet timestamps.
Fields the schema does not know land, as one JSON object per row, in ``_extra``.
"""

from __future__ import annotations

import pyarrow as pa

INT, FLOAT, STR, TS = "int", "float", "str", "ts"

FIELDS: tuple[tuple[str, str], ...] = (
    ("id", INT),
    ("uuid", STR),
    ("account_id", STR),
    ("call_direction", STR),
    ("caller_id_name", STR),
    ("caller_id_number", STR),
    ("destination_number", STR),
    ("duration", INT),
    ("billsec", INT),
    ("ring_time", INT),
    ("answer_time", TS),
    ("start_time", TS),
    ("end_time", TS),
    ("progress_time", TS),
    ("created_at", TS),
    ("updated_at", TS),
    ("cost", FLOAT),
    ("total_cost", FLOAT),
    ("streaming_cost", FLOAT),
    ("currency", STR),
    ("hangup_cause", STR),
    ("hangup_cause_code", INT),
    ("hangup_cause_name", STR),
    ("hangup_disposition", STR),
    ("hangup_source", STR),
    ("failure_code", STR),
    ("failure_reason", STR),
    ("bridge_uuid", STR),
    ("sip_call_id", STR),
    ("sip_user_agent", STR),
    ("codec", STR),
    ("mos", FLOAT),
    ("jitter", FLOAT),
    ("packet_loss", FLOAT),
    ("network_addr", STR),
    ("carrier_ip", STR),
    ("context", STR),
    ("region", STR),
    ("origination_region", STR),
    ("campaign_id", STR),
    ("customer_endpoint", STR),
    ("trunk_id", STR),
    ("terminated_to", STR),
)
FIELD_NAMES: tuple[str, ...] = tuple(name for name, _ in FIELDS)
KNOWN: frozenset[str] = frozenset(FIELD_NAMES)
EXTRA = "_extra"

TIMESTAMP = pa.timestamp("us", tz="UTC")
ARROW_TYPES: dict[str, pa.DataType] = {
    INT: pa.int64(),
    FLOAT: pa.float64(),
    STR: pa.string(),
    TS: TIMESTAMP,
}

SCHEMA = pa.schema(
    [pa.field(name, ARROW_TYPES[kind]) for name, kind in FIELDS] + [pa.field(EXTRA, pa.string())]
)

assert len(FIELDS) == 43, "the Vobiz CDR object has 43 fields"
