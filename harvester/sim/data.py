"""Deterministic Vobiz CDR data for the simulator.

Every record is a pure function of ``(seed, customer, day, index)``: the same seed gives the
same customers, the same calls and the same uuids on every run, so tests can compare a
harvested lake with the simulator's own records exactly.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# (hangup_cause, hangup_cause_code, hangup_cause_name, failure_code, failure_reason, status)
# Codes and names from the Vobiz hangup-cause reference.
_ANSWERED = [
    ("NORMAL_CLEARING", 4000, "Normal Hangup"),
    ("NORMAL_CLEARING", 4010, "End Of XML Instructions"),
    ("NORMAL_CLEARING", 4020, "Multiparty Call Ended"),
]
_UNANSWERED = [
    ("NO_ANSWER", 3000, "No Answer", "19", "NO_ANSWER", "no_answer", 0.45),
    ("USER_BUSY", 3010, "Busy Line", "17", "USER_BUSY", "busy", 0.18),
    ("CALL_REJECTED", 3020, "Rejected", "21", "CALL_REJECTED", "failed", 0.10),
    ("UNALLOCATED_NUMBER", 3050, "Unallocated number", "1", "UNALLOCATED_NUMBER", "failed", 0.07),
    ("ORIGINATOR_CANCEL", 1000, "Canceled", "487", "ORIGINATOR_CANCEL", "failed", 0.08),
    (
        "DESTINATION_OUT_OF_ORDER",
        2010,
        "Destination Out Of Service",
        "27",
        "DESTINATION_OUT_OF_ORDER",
        "failed",
        0.04,
    ),
    ("NORMAL_TEMPORARY_FAILURE", 5000, "Network Error", "41", "NORMAL_TEMPORARY_FAILURE", "failed", 0.04),
    ("MEDIA_TIMEOUT", 6020, "Media Timeout", "408", "MEDIA_TIMEOUT", "failed", 0.02),
    ("NO_ANSWER", 6010, "Ring Timeout Reached", "19", "NO_ANSWER", "no_answer", 0.02),
]
_UNANSWERED_WEIGHTS = [u[6] for u in _UNANSWERED]
_FIRST = ["Asha", "Ravi", "Priya", "Arjun", "Meera", "Kiran", "Neha", "Vikram", "Anil", "Divya"]
_LAST = ["Sharma", "Iyer", "Patel", "Reddy", "Nair", "Gupta", "Khan", "Das", "Menon", "Rao"]
_COMPANIES = ["Acme Corp", "Bluefin Logistics", "Chai Point", "Deccan Health", "Everest Fintech"]
_ORIG_REGIONS = ["mumbai", "mumbai", "mumbai", "delhi", "chennai", "bangalore"]
_TIMEZONES = ["Asia/Kolkata", "Asia/Kolkata", "Asia/Kolkata", "Asia/Dubai", "Asia/Singapore"]


def iso(ts: float) -> str:
    """Unix seconds → the API's ISO 8601 UTC form (``2026-03-25T10:00:08Z``)."""
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _phone(rng: random.Random) -> str:
    return f"+91{rng.choice('6789')}{rng.randrange(10**8, 10**9)}"


@dataclass(frozen=True)
class Customer:
    """One customer account under the partner."""

    index: int
    auth_id: str
    auth_token: str
    name: str
    timezone: str
    dids: tuple[str, ...]
    rate_per_minute: float

    def public(self) -> Record:
        """The account object as the partner listing returns it (auth_token included)."""
        return {
            "id": str(500000 + self.index),
            "auth_id": self.auth_id,
            "api_id": f"api-{self.auth_id.lower()}",
            "name": self.name,
            "email": f"ops+{self.index}@example.com",
            "phone": self.dids[0],
            "company": self.name,
            "account_type": "customer",
            "role": "customer",
            "billing_mode": "prepaid",
            "postpaid": False,
            "timezone": self.timezone,
            "country": "IN",
            "cash_credits": f"{1000 + self.index * 37.5:.5f}",
            "cps_limit": 10,
            "concurrent_calls_limit": 50,
            "is_active": True,
            "enabled": True,
            "is_verified": True,
            "is_trial_account": False,
            "kyc_status": "verified",
            "created_at": "2025-01-15T08:00:00Z",
            "updated_at": "2026-01-15T08:00:00Z",
            "last_login": None,
            "pricing_tier": {"currency": "INR", "rate_per_minute": self.rate_per_minute},
            "partner_id": "PA_SIMULATOR",
            "resource_uri": f"/v1/Account/{self.auth_id}/",
            "auth_token": self.auth_token,
        }


@dataclass
class Dataset:
    """The simulator's universe: customers, a span of days and their calls.

    ``counts`` overrides the number of calls of a ``(auth_id, 'YYYY-MM-DD')`` shard;
    otherwise the count varies per customer and day around ``calls_per_day``.
    """

    seed: int = 7
    customers: int = 3
    days: int = 3
    calls_per_day: int = 200
    end_date: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    cache_records: int = 400_000
    volumes: str = "even"  # even: each shard 0.6–1.4 × calls_per_day; lognormal: a partner's long tail

    def __post_init__(self) -> None:
        rng = random.Random(f"{self.seed}:customers")
        self.customer_list: list[Customer] = []
        for i in range(self.customers):
            suffix = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))
            name = rng.choice(_COMPANIES) + f" {i + 1}"
            self.customer_list.append(
                Customer(
                    index=i,
                    auth_id=f"MA_{suffix}",
                    auth_token=f"tok_{rng.getrandbits(96):024x}",
                    name=name,
                    timezone=rng.choice(_TIMEZONES),
                    dids=tuple(_phone(rng) for _ in range(3)),
                    rate_per_minute=rng.choice([0.3, 0.45, 0.6]),
                )
            )
        self.by_id = {c.auth_id: c for c in self.customer_list}
        self.day_list = [self.end_date - dt.timedelta(days=n) for n in range(self.days)][::-1]
        self._cache: OrderedDict[tuple[str, str], list[Record]] = OrderedDict()
        self._cached_records = 0
        # Extra records added at run time: late arrivals and drift (see sim.server).
        self.extra: dict[tuple[str, str], list[Record]] = {}
        self.version = 0  # bumped whenever records change, so query caches stay honest

    # -- sizes ---------------------------------------------------------------------------
    def count(self, auth_id: str, day: dt.date) -> int:
        """How many calls the base data set holds for one customer and day."""
        key = (auth_id, day.isoformat())
        if key in self.counts:
            return self.counts[key]
        if day not in self.day_set:
            return 0
        rng = random.Random(f"{self.seed}:count:{auth_id}:{day.isoformat()}")
        if self.volumes == "lognormal":  # most customers make a handful of calls, a few many
            scale = random.Random(f"{self.seed}:scale:{auth_id}").lognormvariate(0.0, 1.2)
            return max(0, int(self.calls_per_day * scale * rng.uniform(0.5, 1.5)))
        return max(0, int(self.calls_per_day * rng.uniform(0.6, 1.4)))

    @property
    def day_set(self) -> set[dt.date]:
        return set(self.day_list)

    # -- records -------------------------------------------------------------------------
    def shard(self, auth_id: str, day: dt.date) -> list[Record]:
        """All calls of one customer on one UTC day, newest first."""
        key = (auth_id, day.isoformat())
        recs = self._cache.get(key)
        if recs is None:
            recs = self._generate(self.by_id[auth_id], day, self.count(auth_id, day))
            self._cache[key] = recs
            self._cached_records += len(recs)
            while self._cached_records > self.cache_records and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_records -= len(old)
        else:
            self._cache.move_to_end(key)
        extra = self.extra.get(key)
        if extra:
            return sort_newest_first(recs + extra)
        return recs

    def records(self, auth_ids: Iterable[str], days: Iterable[dt.date]) -> list[Record]:
        """Every call of these customers on these days, newest first."""
        out: list[Record] = []
        for day in sorted(days, reverse=True):
            per_day = [r for a in auth_ids for r in self.shard(a, day)]
            out.extend(sort_newest_first(per_day))
        return out

    def add_late_record(self, auth_id: str, day: dt.date, when: float | None = None) -> Record:
        """Add one call to a shard after the fact (a late CDR); returns it."""
        key = (auth_id, day.isoformat())
        n = len(self.extra.get(key, []))
        rng = random.Random(f"{self.seed}:late:{auth_id}:{day.isoformat()}:{n}")
        day0 = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
        start = when if when is not None else day0 + rng.randrange(0, 86_000)
        rec = make_record(self.by_id[auth_id], rng, start, 900_000 + n, day)
        self.extra.setdefault(key, []).append(rec)
        self.version += 1
        return rec

    def _generate(self, cust: Customer, day: dt.date, n: int) -> list[Record]:
        rng = random.Random(f"{self.seed}:calls:{cust.auth_id}:{day.isoformat()}")
        day0 = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
        starts = sorted((rng.randrange(0, 86_000) for _ in range(n)), reverse=True)
        return [make_record(cust, rng, day0 + s, i, day) for i, s in enumerate(starts)]


def sort_newest_first(recs: list[Record]) -> list[Record]:
    """Newest first by ``start_time``, ties broken by ``id`` (stable and total)."""
    return sorted(recs, key=lambda r: (r["start_time"], r["id"]), reverse=True)


def make_record(cust: Customer, rng: random.Random, start: float, i: int, day: dt.date) -> Record:
    """One realistic CDR with the documented quirks of the real API."""
    outbound = rng.random() < 0.62
    ours = rng.choice(cust.dids)
    theirs = _phone(rng)
    answered = rng.random() < 0.55
    ring = rng.randint(2, 18)
    context = "sip-trunking" if rng.random() < 0.25 else "voice-api"
    if answered:
        billsec = max(1, int(rng.expovariate(1 / 75)))
        cause, code, cname = rng.choice(_ANSWERED)
        fcode = freason = None
        disposition = rng.choice(["send_bye", "recv_bye"])
        source = rng.choice(["Caller", "Callee", "Vobiz"])
        mos: float | None = round(rng.uniform(3.6, 4.5), 1)
        jitter: float | int | None = rng.choice([0, 1, 2, 3, 0.2, 0.7, 1.5])
        loss: float | None = rng.choice([0, 0, 0, 0.1, 0.3, 1.2])
        codec: str | None = rng.choice(["PCMU", "PCMU", "PCMA", "opus"])
    else:
        billsec = 0
        u = rng.choices(_UNANSWERED, weights=_UNANSWERED_WEIGHTS)[0]
        cause, code, cname, fcode, freason = u[0], u[1], u[2], u[3], u[4]
        ring = rng.randint(20, 45) if cause == "NO_ANSWER" else rng.randint(0, 6)
        disposition = rng.choice(["send_cancel", "recv_cancel", "send_refuse"])
        source = rng.choice(["Caller", "Callee", "Carrier", "Vobiz"])
        media_null = rng.random() < 0.3
        mos = None if media_null else 0
        jitter = None if media_null else 0
        loss = None if media_null else 0
        codec = None if rng.random() < 0.4 else "PCMU"
    duration = ring + billsec
    end = start + duration
    rate = cust.rate_per_minute
    cost = round(-(-billsec // 60) * rate, 4) if billsec else 0
    streaming = round(0.002 * billsec, 4) if (answered and rng.random() < 0.1) else 0
    total = round(cost + streaming, 4)
    updated = end + rng.randint(0, 3)
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    caller = ours if outbound else theirs
    callee = theirs if outbound else ours
    name_kind = rng.random()
    caller_name = f"{first} {last}" if name_kind < 0.5 else ("" if name_kind < 0.75 else caller)
    call_uuid = _uuid(rng)
    return {
        "account_id": cust.auth_id,
        "answer_time": iso(start + ring) if answered else None,
        "billsec": billsec,
        "bridge_uuid": _uuid(rng) if answered else None,
        "call_direction": "outbound" if outbound else "inbound",
        "caller_id_name": caller_name,
        "caller_id_number": caller,
        "campaign_id": f"cmp_{rng.randrange(100, 999)}" if rng.random() < 0.08 else None,
        "carrier_ip": f"103.21.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}" if outbound else None,
        "codec": codec,
        "context": context,
        "cost": cost,
        "created_at": iso(end),
        "currency": "INR",
        "customer_endpoint": f"sip:ep{rng.randrange(10, 99)}@sip.vobiz.ai"
        if context == "sip-trunking"
        else None,
        "destination_number": callee,
        "duration": duration,
        "end_time": iso(end),
        "failure_code": fcode,
        "failure_reason": freason,
        "hangup_cause": cause,
        "hangup_cause_code": code,
        "hangup_cause_name": cname,
        "hangup_disposition": disposition,
        "hangup_source": source,
        "id": 18_000_000_000 + cust.index * 10**11 + day.toordinal() % 10_000 * 10**6 + i,
        "jitter": jitter,
        "mos": mos,
        "network_addr": f"13.203.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}",
        "origination_region": rng.choice(_ORIG_REGIONS),
        "packet_loss": loss,
        "progress_time": iso(start + min(1, ring)) if rng.random() < 0.9 else None,
        "region": "ap-south-1",
        "ring_time": ring,
        "sip_call_id": _uuid(rng),
        "sip_user_agent": rng.choice(["Vobiz", "Vobiz", "Zoiper rv2.10", "Linphone/5.2", None]),
        "start_time": iso(start),
        "streaming_cost": streaming,
        "terminated_to": None if rng.random() < 0.95 else _phone(rng),
        "total_cost": total,
        "trunk_id": f"trk_{cust.index:03d}" if context == "sip-trunking" else None,
        "updated_at": iso(updated),
        "uuid": call_uuid,
    }
