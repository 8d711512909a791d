"""Shard reconciliation against the API's own numbers.

The hard check: distinct ``uuid`` count equals ``pagination.total``. The soft check: sums of
``billsec``, ``duration`` and ``total_cost`` equal the ``summary`` block of the same query
(to 0.01). The public docs' own examples do not add up, so sums only fail a shard with
``--strict-sums``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# our sum column -> the summary key the API reports it under
SUM_KEYS = {
    "billsec": "total_billable_seconds",
    "duration": "total_duration_seconds",
    "total_cost": "total_cost",
}


@dataclass
class Verdict:
    """What a shard's reconciliation found."""

    rows: int
    total: int
    sums: dict[str, float]
    expected_sums: dict[str, float | None]
    problems: list[str] = field(default_factory=list)
    sum_problems: list[str] = field(default_factory=list)

    @property
    def count_ok(self) -> bool:
        return self.rows == self.total

    def ok(self, strict_sums: bool) -> bool:
        return self.count_ok and not (strict_sums and self.sum_problems)

    def describe(self) -> str:
        return "; ".join(self.problems + self.sum_problems) or "ok"


def table_sums(table: pa.Table) -> dict[str, float]:
    """Sums of the reconciled columns (0 for an empty table)."""
    out: dict[str, float] = {}
    for col in SUM_KEYS:
        s = pc.sum(table.column(col)).as_py() if table.num_rows else 0
        out[col] = round(float(s or 0), 6)
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def verify(table: pa.Table, total: int, summary: dict[str, Any] | None) -> Verdict:
    """Reconcile a deduplicated shard table with the API's total and summary."""
    return verify_counts(table.num_rows, table_sums(table), total, summary)


def verify_counts(rows: int, sums: dict[str, float], total: int, summary: dict[str, Any] | None) -> Verdict:
    """Reconcile a shard's distinct row count and column sums with the API's numbers."""
    expected = {col: _num((summary or {}).get(key)) for col, key in SUM_KEYS.items()}
    v = Verdict(rows=rows, total=total, sums=sums, expected_sums=expected)
    if rows != total:
        v.problems.append(f"{rows} distinct records but the API total is {total}")
    if summary is None:
        v.sum_problems.append("no summary block to check sums against")
        return v
    summary_calls = _num(summary.get("totalCalls"))
    if summary_calls is not None and summary_calls != total:
        v.sum_problems.append(f"summary.totalCalls {summary_calls:g} != pagination.total {total}")
    for col, key in SUM_KEYS.items():
        want = expected[col]
        if want is None:
            v.sum_problems.append(f"summary has no {key}")
        elif abs(sums[col] - want) > 0.01 + 1e-9:
            v.sum_problems.append(f"sum({col})={sums[col]:g} but summary.{key}={want:g}")
    return v
