"""The end-of-run summary: a small table on stderr, or one JSON object on stdout."""

from __future__ import annotations

import time
from typing import Any

from harvester.api.client import ClientStats
from harvester.config import HarvestConfig
from harvester.errors import EXIT_INCOMPLETE, EXIT_OK
from harvester.harvest.engine import Harvester
from harvester.harvest.results import RunStats


def exit_code(stats: RunStats, allow_unverified: bool) -> int:
    """0 when every shard is complete; 1 when any failed, is unverified, or the run stopped."""
    c = stats.counts
    if stats.stopped or c["failed"] or stats.rejected or stats.fold_failed:
        return EXIT_INCOMPLETE
    if c["unverified"] and not allow_unverified:
        return EXIT_INCOMPLETE
    if stats.done < stats.shards_planned:
        return EXIT_INCOMPLETE
    return EXIT_OK


def build(
    cfg: HarvestConfig,
    harvester: Harvester,
    client: ClientStats,
    rate: str,
    code: int,
    error: str | None,
    started: float,
) -> dict[str, Any]:
    """The run's facts, with stable keys (documented in the README)."""
    stats, counts = harvester.stats, harvester.fetcher.pages.counts
    elapsed = max(1e-9, time.monotonic() - started)
    c = stats.counts
    glob = f"{cfg.out}/**/*.parquet"
    return {
        "status": "complete" if code == EXIT_OK else ("incomplete" if code == EXIT_INCOMPLETE else "error"),
        "exit_code": code,
        "error": error,
        "stopped": stats.stopped,
        "lake": str(cfg.out),
        "scope": cfg.scope,
        "start_date": cfg.start_date.isoformat(),
        "end_date": cfg.end_date.isoformat(),
        "accounts": stats.accounts,
        "fetch": stats.fetch or cfg.scope,
        "fetch_note": stats.fetch_note or None,
        "shards": {
            "planned": stats.shards_planned,
            "verified": c["verified"],
            "unverified": c["unverified"],
            "failed": c["failed"],
            "skipped": c["skipped"],
            "unchanged": c["unchanged"],
            "harvested": c["action:harvested"],
            "reharvested": c["action:reharvested"],
            "rechecked": c["action:rechecked"],
        },
        "pages": counts.pages,
        "records": stats.records,
        "bytes_written": stats.bytes,
        "days_rewritten": stats.days_folded,
        "requests": client.requests,
        "retries": client.retries,
        "throttled": client.throttled,
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(stats.records / elapsed, 1),
        "requests_per_s": round(client.requests / elapsed, 2),
        "rate": rate,
        "decode_workers": {"processes": harvester.decode_processes, "pages": counts.worker_pages},
        "unverified": [
            {"shard": r.shard.key, "detail": r.detail} for r in stats.problems if r.status == "unverified"
        ],
        "failed": [{"shard": r.shard.key, "detail": r.detail} for r in stats.problems if r.status == "failed"]
        + [
            {"shard": f"customer {who}", "detail": f"the listing's id {who} {why}: not harvested"}
            for who, why in stats.rejected.items()
        ]
        + [
            {"shard": f"day {day}", "detail": f"its file was not rewritten ({why}): re-run to fold it"}
            for day, why in stats.fold_failed.items()
        ],
        "duckdb": f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)",
    }


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def render(rep: dict[str, Any]) -> str:
    """The summary table for stderr."""
    s = rep["shards"]
    rows = [
        ("result", f"{rep['status'].upper()} (exit {rep['exit_code']})"),
        (
            "shards",
            f"{s['planned']} planned: {s['verified']} verified, {s['unverified']} unverified, "
            f"{s['failed']} failed, {s['skipped']} skipped, {s['unchanged']} unchanged",
        ),
        (
            "",
            f"{s['harvested']} harvested, {s['reharvested']} re-harvested, {s['rechecked']} re-checked",
        ),
        (
            "records",
            f"{rep['records']:,} in {rep['pages']:,} pages, {_human_bytes(rep['bytes_written'])} written",
        ),
        (
            "requests",
            f"{rep['requests']:,} ({rep['requests_per_s']}/s, rate {rep['rate']}), "
            f"{rep['retries']} retries, {rep['throttled']} × 429",
        ),
        ("elapsed", f"{rep['elapsed_s']:.1f} s, {rep['records_per_s']:,.0f} records/s"),
        ("lake", rep["lake"]),
        ("query", f'python -c "import duckdb; print(duckdb.sql(\\"{rep["duckdb"]}\\"))"'),
    ]
    if rep["error"]:
        rows.insert(1, ("error", rep["error"]))
    if rep["stopped"]:
        rows.insert(1, ("stopped", rep["stopped"] + " (re-run the same command to resume)"))
    for item in rep["unverified"]:
        rows.append(("UNVERIFIED", f"{item['shard']}: {item['detail']}"))
    for item in rep["failed"]:
        rows.append(("FAILED", f"{item['shard']}: {item['detail']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def one_line(rep: dict[str, Any]) -> str:
    """The run's result in one line (stderr under ``--quiet``, the log file's journal)."""
    if rep["error"]:
        return f"{rep['status']} (exit {rep['exit_code']}): {rep['error']}"
    s = rep["shards"]
    text = (
        f"{rep['status']} (exit {rep['exit_code']}): {s['planned']} shards, {s['verified']} verified, "
        f"{s['unverified']} unverified, {len(rep['failed'])} failed; {rep['records']} records, "
        f"{rep['requests']} requests"
    )
    if rep["stopped"]:
        text += f"; stopped: {rep['stopped']} (re-run the same command to resume)"
    elif rep["exit_code"]:
        text += "; re-run the same command to fetch what is missing"
    return text
