"""The simulated API's answers as pure functions: filters, the summary block, the page
body, the error envelope, and the token bucket of a rate limit."""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid as uuidlib
from typing import Any

import orjson

from harvester.sim.data import Record

STATUS = {"answered", "failed", "busy", "no_answer", "no-answer"}
FILTERS = (
    "start_date",
    "end_date",
    "call_direction",
    "status",
    "hangup_cause",
    "min_duration",
    "from_number",
    "to_number",
)


class ApiError(Exception):
    """An error answered with the documented Vobiz error envelope."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    """The documented error envelope."""
    return orjson.dumps(
        {
            "status": "error",
            "error": {"code": code, "message": message, "details": details or {}},
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "requestId": f"req_{uuidlib.uuid4().hex[:12]}",
        }
    )


class TokenBucket:
    """Token bucket per credential: ``rate`` tokens/s, ``size`` at most."""

    def __init__(self, rate: float, size: int) -> None:
        self.rate, self.size = rate, size
        self.tokens = float(size)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """Take a token; returns 0 on success, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.size, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def status_of(r: Record) -> str:
    if r["billsec"] > 0:
        return "answered"
    cause = r["hangup_cause"]
    if cause == "USER_BUSY":
        return "busy"
    if cause == "NO_ANSWER":
        return "no_answer"
    return "failed"


def summarize(recs: list[Record]) -> dict[str, Any]:
    """The ``summary`` block over a filtered set (zeroed when empty)."""
    n = len(recs)
    answered = sum(1 for r in recs if r["billsec"] > 0)
    dur = sum(r["duration"] for r in recs)
    return {
        "answerRate": round(answered * 100 / n, 1) if n else 0,
        "answeredCalls": answered,
        "avgCallDuration": f"{round(dur / n) if n else 0}s",
        "last_call_at": max((r["end_time"] for r in recs), default=None),
        "totalCalls": n,
        "total_billable_seconds": sum(r["billsec"] for r in recs),
        "total_cost": round(math.fsum(r["total_cost"] for r in recs), 4),
        "total_duration_seconds": dur,
    }


def parse_date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "VALIDATION_ERROR", f"{name} must be YYYY-MM-DD, got {value!r}") from None


def parse_int(value: str, name: str, low: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if n < low:
        raise ApiError(400, "VALIDATION_ERROR", f"{name} must be an integer >= {low}")
    return n


def apply_filters(recs: list[Record], filters: dict[str, str]) -> list[Record]:
    """The records that pass every filter but the dates (applied when the days are picked)."""
    if "call_direction" in filters:
        want = filters["call_direction"]
        if want not in ("inbound", "outbound"):
            raise ApiError(400, "VALIDATION_ERROR", "call_direction must be inbound or outbound")
        recs = [r for r in recs if r["call_direction"] == want]
    if "status" in filters:
        status = filters["status"]
        if status not in STATUS:
            raise ApiError(400, "VALIDATION_ERROR", f"unknown status {status!r}")
        status = status.replace("-", "_")
        recs = [r for r in recs if status_of(r) == status]
    if "hangup_cause" in filters:
        cause = filters["hangup_cause"].upper()
        recs = [r for r in recs if (r["hangup_cause"] or "") == cause]
    if "min_duration" in filters:
        low = parse_int(filters["min_duration"], "min_duration", 0)
        recs = [r for r in recs if r["duration"] >= low]
    if "from_number" in filters:
        frm = filters["from_number"]
        recs = [r for r in recs if frm in r["caller_id_number"]]
    if "to_number" in filters:
        to = filters["to_number"]
        recs = [r for r in recs if to in r["destination_number"]]
    return recs


def page_body(
    recs: list[Record], summary: dict[str, Any], page: int, per_page: int, envelope: dict[str, Any]
) -> bytes:
    """One list page of ``recs`` (the whole filtered set) as the API answers it."""
    total = len(recs)
    pages = math.ceil(total / per_page) if total else 0
    data = recs[(page - 1) * per_page : page * per_page]
    return orjson.dumps(
        {
            "success": True,
            **envelope,
            "count": len(data),
            "data": data,
            "pagination": {
                "page": page,
                "per_page": per_page,
                "total": total,
                "pages": pages,
                "has_next": page < pages,
                "has_prev": page > 1,
            },
            "summary": summary,
        }
    )
