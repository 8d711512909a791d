"""``vobiz-harvest compact``: convert a lake of the earlier layout to one file per day."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson

from harvester.errors import UsageError
from harvester.lake.compact import compact
from harvester.lake.lake import open_store


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compact",
        help="convert a lake of one file per customer-day to one file per day",
        description="Convert a lake written by vobiz-harvest 0.1 (one Parquet file per customer "
        "and day) to the current layout (one file per day), a day at a time. Safe to kill and "
        "run again; a converted lake is left as it is.",
    )
    p.add_argument("--out", required=True, help="the lake: a directory, or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    p.add_argument(
        "--s3-region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    p.add_argument("--json", action="store_true", help="print what was done as one JSON object")


def command(args: argparse.Namespace) -> int:
    if not str(args.out).strip():
        raise UsageError("--out is empty: name the lake's directory or s3://bucket/prefix")
    done = compact(open_store(args.out, args.s3_endpoint_url, args.s3_region))
    facts = {
        "lake": str(args.out),
        "already_compact": done.already,
        "days": done.days,
        "shards": done.shards,
        "rows": done.rows,
        "files_before": done.files_before,
        "files_after": done.files_after,
        "dropped": done.dropped,
        "days_swapped_in_one_step": done.swapped,
        "not_atomic": done.not_atomic,
    }
    if args.json:
        print(orjson.dumps(facts).decode())
    elif done.already:
        print(f"{args.out}: already one file per day; nothing to do", file=sys.stderr)
    else:
        print(
            f"{args.out}: {done.days} days compacted, {done.shards} shards and {done.rows:,} rows "
            f"from {done.files_before:,} files into {done.files_after:,}",
            file=sys.stderr,
        )
    if done.not_atomic:
        print(
            f"note: {done.not_atomic}, so each day's new file appeared just before its old files "
            "were removed: a reader listing a day at that moment could count it twice",
            file=sys.stderr,
        )
    for shard in done.dropped:
        print(f"  {shard}: its file was missing; the next harvest fetches it again", file=sys.stderr)
    return 0
