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

from harvester.records.decode import Page

# our sum column -> the summary key the API reports it under
SUM_KEYS = {
    "billsec": "total_billable_seconds",
    "duration": "total_duration_seconds",
    "total_cost": "total_cost",
}


def missing_uuids(table: pa.Table) -> int:
    """Rows whose uuid is null or empty: they cannot be told apart, so cannot be counted."""
    uuids = table.column("uuid")
    empty = pc.sum(pc.equal(uuids, "")).as_py() or 0
    return uuids.null_count + int(empty)


def accounts_in(table: pa.Table) -> frozenset[str | None]:
    """The distinct ``account_id`` values of a shard's rows (a feed's rows must name the
    listing's customers to be attributed)."""
    return frozenset(pc.unique(table.column("account_id")).to_pylist()) if table.num_rows else frozenset()


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
        return not self.problems

    def ok(self, strict_sums: bool) -> bool:
        return self.count_ok and not (strict_sums and self.sum_problems)

    def describe(self) -> str:
        return "; ".join(self.problems + self.sum_problems) or "ok"


def table_sums(table: pa.Table) -> dict[str, float]:
    """Sums of the reconciled columns (0 for an empty table; NaN or inf stay as they are, and
    fail the sum check)."""
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


def verify(
    table: pa.Table, total: int, summary: dict[str, Any] | None, contradictions: list[str] | None = None
) -> Verdict:
    """Reconcile a deduplicated shard table with the API's total and summary."""
    return verify_counts(
        table.num_rows, table_sums(table), total, summary, missing_uuids(table), contradictions
    )


def verify_counts(
    rows: int,
    sums: dict[str, float],
    total: int,
    summary: dict[str, Any] | None,
    missing: int = 0,
    contradictions: list[str] | None = None,
) -> Verdict:
    """Reconcile a shard's rows (one per distinct uuid, plus ``missing`` rows without one)
    and column sums with the API's numbers. Rows without a uuid, and pages that contradicted
    page 1 (``contradictions``), fail the count check: neither can be proven complete."""
    expected = {col: _num((summary or {}).get(key)) for col, key in SUM_KEYS.items()}
    v = Verdict(rows=rows, total=total, sums=sums, expected_sums=expected)
    v.problems.extend(contradictions or ())
    if missing:
        v.problems.append(f"{missing} records have no uuid, so they cannot be counted as distinct")
    distinct = rows - missing
    if distinct != total:
        v.problems.append(f"{distinct} distinct records but the API total is {total}")
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
        elif not math.isfinite(sums[col]):
            v.sum_problems.append(f"sum({col}) is {sums[col]}: a record holds a value that is not a number")
        elif not abs(sums[col] - want) <= 0.01 + 1e-9:
            v.sum_problems.append(f"sum({col})={sums[col]:g} but summary.{key}={want:g}")
    return v


def contradiction(first: Page, page: Page, n: int) -> str | None:
    """How page ``n`` of a closed day contradicts page 1, or None when it agrees.

    On a closed day every page answers the same query: same ``total``; every page before
    the last holds ``per_page`` records and the last the remainder; ``has_next`` is true
    exactly before the last. A page that says otherwise (a total that grew, an empty page
    in the middle) means records were lost or invented somewhere, so the shard cannot be
    proven complete by page 1's numbers."""
    if page.total != first.total:
        return f"page {n} says total {page.total} but page 1 said {first.total}"
    expected = first.per_page if n < first.pages else max(0, first.total - (first.pages - 1) * first.per_page)
    if n > first.pages:
        expected = 0
    if page.rows != expected:
        return f"page {n} holds {page.rows} records where page 1's numbers mean {expected}"
    if page.has_next != (n < first.pages):
        return f"page {n} says has_next={str(page.has_next).lower()} where page 1's numbers mean the opposite"
    return None
