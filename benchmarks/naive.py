"""The loop a user writes from the docs: requests, sequential pages, pandas, one Parquet file.

Usage: python -m benchmarks.naive BASE_URL AUTH_ID TOKEN START END OUT
Prints one JSON line: {"records", "pages", "elapsed_s"}.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

import pandas as pd
import requests


def main() -> int:
    base, auth_id, token, start, end, out = sys.argv[1:7]
    headers = {"X-Auth-ID": auth_id, "X-Auth-Token": token}
    t0 = time.perf_counter()
    s = requests.Session()
    s.headers.update(headers)
    accounts, page = [], 1
    while True:
        doc = s.get(f"{base}/api/v1/partner/accounts", params={"page": page, "per_page": 100}).json()
        accounts += [a["auth_id"] for a in doc["accounts"]]
        if page * doc["size"] >= doc["total"]:
            break
        page += 1
    rows, pages = [], 0
    d0, d1 = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    for acc in accounts:
        day = d0
        while day <= d1:
            page = 1
            while True:
                params = {
                    "start_date": day.isoformat(),
                    "end_date": day.isoformat(),
                    "page": page,
                    "per_page": 100,
                }
                r = s.get(f"{base}/api/v1/partner/accounts/{acc}/cdrs", params=params)
                while r.status_code == 429:
                    time.sleep(float(r.headers.get("Retry-After", 1)))
                    r = s.get(f"{base}/api/v1/partner/accounts/{acc}/cdrs", params=params)
                r.raise_for_status()
                doc = r.json()
                pages += 1
                rows.extend(doc["data"])
                if not doc["pagination"]["has_next"]:
                    break
                page += 1
            day += dt.timedelta(days=1)
    df = pd.DataFrame(rows)
    for col in ("answer_time", "start_time", "end_time", "progress_time", "created_at", "updated_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_parquet(Path(out) / "cdrs.parquet")
    print(json.dumps({"records": len(df), "pages": pages, "elapsed_s": time.perf_counter() - t0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
