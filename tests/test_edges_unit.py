"""Unit tests of the pure checks at the edges: waits, hints, ids, URLs, text, pages, verdicts."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest

from harvester.api.client import (
    MAX_WAIT,
    RetryPolicy,
    error_message,
    origin,
    parse_retry_after,
    throttle_wait,
)
from harvester.api.endpoints import customer_id_problem
from harvester.api.pacing import AutoRate
from harvester.config import check_base_url
from harvester.errors import BadResponse, DecodeError, UsageError, clean
from harvester.records.decode import Page, Part, check_shape, decode_page
from harvester.records.verify import contradiction, verify, verify_counts

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("header", "doc", "seconds"),
    [
        ("3", None, 3.0),
        ("1000000000", None, 1e9),
        ("-5", None, -5.0),
        ("nan", None, None),
        ("Fri, 31 Dec 9999 23:59:59 GMT", None, 253402300799.0 - NOW),
        ("not a date", {"error": {"details": {"retryAfter": 2}}}, 2.0),
        (None, {"retryAfter": True}, None),
        (None, None, None),
    ],
)
def test_retry_after_parsing(header: str | None, doc: object, seconds: float | None) -> None:
    assert parse_retry_after(header, doc, now=NOW) == seconds


def test_throttle_wait_is_clamped_both_ways() -> None:
    policy = RetryPolicy(backoff_base=0.25)
    assert throttle_wait(1e9, 1, policy) == MAX_WAIT
    assert [throttle_wait(0.0, n, policy) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]
    assert throttle_wait(-3.0, 1, policy) == 0.25
    assert throttle_wait(5.0, 1, policy) == 5.0
    assert throttle_wait(0.0, 50, policy) == MAX_WAIT
    assert 0.25 <= throttle_wait(None, 1, policy) <= 0.5


def test_auto_rate_does_not_believe_an_absurd_limit() -> None:
    t = [0.0]
    rate = AutoRate(start=20.0, clock=lambda: t[0])
    rate.on_throttle(1e-6)
    assert rate.ceiling == 5.0 and rate.current >= 4.5  # a quarter of the 20/s refused, not 1e-6
    later = AutoRate(start=20.0, clock=lambda: t[0])
    later.on_throttle(12.0)  # a plausible named limit is taken as it is
    assert later.ceiling == 12.0 and later.current == pytest.approx(11.4)


@pytest.mark.parametrize("good", ["MA_XXXXXXXX", "PA_1", "partner-882abc", "a.b", "9"])
def test_customer_ids_accepted(good: str) -> None:
    assert customer_id_problem(good) is None


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x", "a/b", "x/../y", "a\x00b", " a", "a b", "a,b", 12, None]
)
def test_customer_ids_refused(bad: object) -> None:
    assert customer_id_problem(bad) is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://user:pw-secret@127.0.0.1:1", "user or password"),
        ("https://api.vobiz.ai/api/v1", "path"),
        ("https://api.vobiz.ai/?x=1", "path or query"),
        ("ftp://api.vobiz.ai", "not an http(s) URL"),
        ("http://api.vobiz.ai", "plain http"),
        ("http://127.0.0.1:99999", "not a URL"),
    ],
)
def test_base_url_shape(url: str, says: str) -> None:
    with pytest.raises(UsageError) as e:
        check_base_url(url)
    assert says in str(e.value) and "pw-secret" not in str(e.value) and "\n" not in str(e.value)


def test_base_url_accepted_forms() -> None:
    assert check_base_url("https://api.vobiz.ai/") == "https://api.vobiz.ai"
    assert check_base_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


def test_server_text_is_one_clean_line_without_the_token() -> None:
    body = orjson.dumps({"error": {"code": "X", "message": "a\nb\x1b[31m\u202e tok-123 " + "z" * 500}})
    said = error_message(body, ("tok-123",))
    assert "\n" not in said and "\x1b" not in said and "\u202e" not in said and "tok-123" not in said
    assert said.startswith("X: a b [31m ***") and len(said) <= 200
    assert clean("x\r\ny") == "x y"
    assert origin("https://u:p@evil.example:8443/steal?t=1") == "https://evil.example:8443"


def _page(total: int, per_page: int = 100, rows: int | None = None, **pag: object) -> bytes:
    n = min(per_page, total) if rows is None else rows
    data = [{"uuid": f"u{i}"} for i in range(n)]
    return orjson.dumps({"data": data, "pagination": {"total": total, "per_page": per_page, **pag}})


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_page(10, pages=10**9), "contradicts"),
        (_page(10, per_page=2**33), "per_page"),
        (_page(10**9), "more records"),
        (_page(5, per_page=2, rows=3), "more than its per_page"),
        (orjson.dumps({"data": [], "pagination": {"total": -1}}), "not a count"),
        (_page(10, per_page="many", rows=1), "not a count"),
    ],
)
def test_pages_that_contradict_themselves(body: bytes, says: str) -> None:
    with pytest.raises(BadResponse) as e:
        decode_page(body, 1, 100)
    assert says in str(e.value)


def test_shape_check_allows_blank_padding() -> None:
    body = b" " * 100 + _page(1) + b"\n" * 100
    assert check_shape(body) is body and decode_page(body, 1, 100).rows == 1
    with pytest.raises(DecodeError):
        check_shape(b"<html>" + b" " * 100)


def _p(n: int, total: int, rows: int, per_page: int = 10, has_next: bool | None = None) -> Page:
    pages = math.ceil(total / per_page)
    return Page(Part(rows), n, per_page, total, pages, n < pages if has_next is None else has_next, None)


def test_contradictions_between_pages() -> None:
    first = _p(1, 25, 10)
    assert contradiction(first, _p(2, 25, 10), 2) is None
    assert contradiction(first, _p(3, 25, 5), 3) is None
    assert "page 2 says total 30" in (contradiction(first, _p(2, 30, 10), 2) or "")
    assert "holds 0 records" in (contradiction(first, _p(2, 25, 0), 2) or "")
    assert "has_next" in (contradiction(first, _p(3, 25, 5, has_next=True), 3) or "")


def test_verdicts_cannot_be_fooled() -> None:
    table = pa.table(
        {"uuid": ["a", None, "b"], "billsec": [1, 1, 1], "duration": [1, 1, 1], "total_cost": [1.0] * 3}
    )
    v = verify(
        table, 3, {"totalCalls": 3, "total_billable_seconds": 3, "total_duration_seconds": 3, "total_cost": 3}
    )
    assert not v.ok(strict_sums=False) and "1 records have no uuid" in v.describe()
    nan = {"billsec": 1.0, "duration": 1.0, "total_cost": math.nan}
    summary = {"totalCalls": 1, "total_billable_seconds": 1, "total_duration_seconds": 1, "total_cost": 12345}
    assert not verify_counts(1, nan, 1, summary).ok(strict_sums=True)
    contradicted = verify_counts(
        1, {**nan, "total_cost": 12345.0}, 1, summary, contradictions=["page 2 says"]
    )
    assert not contradicted.ok(strict_sums=False)
