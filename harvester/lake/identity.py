"""``<out>/_lake.json``: what a lake holds (one scope and one filter set, and the format),
and what was learnt about the API server that fills it (how it reads ``end_date``).

A run into a lake of another scope or filters is refused: mixing them would duplicate or
overwrite shards. A new lake's document is written with its first committed shard, so a run
that commits nothing leaves nothing behind.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from harvester.errors import UsageError, clean
from harvester.lake.store import Store, read_json

FORMAT = 2  # 1: one file per shard (until 0.x); 2: one file per day (lake.days)
KEY = "_lake.json"


class LakeIdentity:
    """The identity document of the lake on ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: dict[str, Any] | None = None  # a new lake's document, not yet written
        self._lock = threading.Lock()  # commits come from several I/O threads

    def check(self, identity: dict[str, Any]) -> None:
        """The lake holds ``identity``, or is new (then it will); else :class:`UsageError`."""
        where = self.store.where
        want = {"format": FORMAT, **identity}
        have = read_json(self.store, KEY)
        if have is None:
            if self.store.has_data():
                raise UsageError(f"--out {where} holds data but no {KEY}: use an empty directory")
            self.pending = want
            return
        if have.get("format") == 1:
            raise UsageError(
                f"--out {where} is a lake of the earlier layout (one file per customer-day): "
                f"convert it once with 'vobiz-harvest compact --out {where}'"
            )
        if {k: have.get(k) for k in want} != want:
            raise UsageError(
                f"--out {where} holds {_text(have)}, this run asks {_text(want)}: "
                "use another --out (mixing them would duplicate or overwrite shards)"
            )

    def write_pending(self) -> None:
        """A new lake's document, before the first thing it describes is recorded. Created
        only if absent: the workers of a partitioned run share one lake, and one that wrote
        it first may have added what it learnt about the server since."""
        with self._lock:
            if self.pending is not None:
                doc = orjson.dumps(self.pending, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
                self.store.create_exclusive(KEY, doc)
                self.pending = None

    def server_fact(self, key: str) -> Any:
        """A fact learnt about the API server and kept with the lake."""
        return ((read_json(self.store, KEY) or {}).get("server") or {}).get(key)

    def record_server_fact(self, key: str, value: Any) -> None:
        with self._lock:
            doc = self.pending or read_json(self.store, KEY) or {}
            self.pending = None
            doc.setdefault("server", {})[key] = value
            self._write(doc)

    def _write(self, doc: dict[str, Any]) -> None:
        self.store.write(KEY, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def _text(doc: dict[str, Any]) -> str:
    """A lake's scope and filters in one line, e.g. ``scope=partner filters={}``."""
    filters = doc.get("filters")
    filters = filters if isinstance(filters, dict) else {}
    text = ",".join(f"{k}={v}" for k, v in sorted(filters.items()))
    return f"scope={clean(doc.get('scope'), 40)} filters={{{clean(text, 120)}}}"
