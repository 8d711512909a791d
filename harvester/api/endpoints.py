"""URL paths and query parameters of the Vobiz CDR and account endpoints.

Path casing matters to the API: ``Account`` capitalised and ``cdr`` lowercase.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from urllib.parse import quote

API = "/api/v1"
ACCOUNTS = f"{API}/partner/accounts"
GLOBAL_CDRS = f"{API}/partner/cdrs"
SCOPES = ("partner", "global", "account")
FILTER_FLAGS = (
    "call_direction",
    "status",
    "hangup_cause",
    "min_duration",
    "from_number",
    "to_number",
)


# A customer id (``auth_id``, e.g. ``MA_XXXXXXXX``): a letter or digit, then up to 127
# letters, digits, ``_``, ``.`` or ``-``. It becomes a URL path segment and a file name, so
# anything else (``/``, ``..``, NUL, spaces, a number instead of a string) is refused.
CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
CUSTOMER_ID_RULE = "a letter or digit, then up to 127 letters, digits, '_', '.' or '-'"


def customer_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a customer id, or None when it can."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not CUSTOMER_ID.fullmatch(value):
        return f"is not {CUSTOMER_ID_RULE}"
    return None


def _seg(value: str) -> str:
    return quote(value, safe="")


def list_path(scope: str, account: str | None) -> str:
    """The CDR list path of a scope (``account`` is the customer / own auth id)."""
    if scope == "global":
        return GLOBAL_CDRS
    assert account is not None
    if scope == "partner":
        return f"{ACCOUNTS}/{_seg(account)}/cdrs"
    return f"{API}/Account/{_seg(account)}/cdr"


def one_path(scope: str, account: str, uuid: str) -> str:
    """The single-CDR path (partner: bare object; account: ``{data, success}``)."""
    if scope == "account":
        return f"{API}/Account/{_seg(account)}/cdr/{_seg(uuid)}"
    return f"{ACCOUNTS}/{_seg(account)}/cdrs/{_seg(uuid)}"


def list_params(
    day: dt.date, filters: Mapping[str, str], page: int, per_page: int, end_offset: int = 0
) -> dict[str, str]:
    """Query parameters for one page of one day: ``start_date`` = day, ``end_date`` = day
    (or the next day, for a server that treats ``end_date`` as exclusive: ``end_offset`` 1)."""
    end = day + dt.timedelta(days=end_offset)
    params = {"start_date": day.isoformat(), "end_date": end.isoformat()}
    params.update(filters)
    params["page"] = str(page)
    params["per_page"] = str(per_page)
    return params


def accounts_params(page: int, per_page: int) -> dict[str, str]:
    """The listing takes ``per_page`` in newer docs and ``size`` in older ones: send both."""
    return {"page": str(page), "per_page": str(per_page), "size": str(per_page)}
