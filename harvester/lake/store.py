"""What a lake's storage promises, whatever holds its bytes: an object (a shard's Parquet
file, a manifest record) appears whole or not at all, under a key that cannot leave the lake.

* :class:`~harvester.lake.local.LocalStore`: a directory (temporary file, fsync, rename).
* :class:`~harvester.lake.objects.ObjectStore`: an object-store prefix (the object appears
  when its upload completes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from harvester.errors import StorageError, shown

BUFFER = 1 << 20  # a streamed file's writes are gathered to this size


def is_uri(out: str | Path) -> bool:
    return "://" in str(out)


# A key names a file or object under the lake's root: ``/``-separated segments of letters,
# digits and ``_ = . -``, none of them empty, ``.`` or ``..``, the first not starting with
# ``/``. Every name the lake writes passes here, so no key can reach outside ``--out``.
_SEGMENT = re.compile(r"[A-Za-z0-9_=.+-]{1,200}")


def check_key(key: str) -> str:
    """``key`` when it names a place inside the lake, else :class:`StorageError`."""
    segments = key.split("/")
    if len(segments) > 8 or not all(_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
        raise StorageError(f"refusing the lake key {shown(key)}: it could name a place outside the lake")
    return key


class StagedTable:
    """A Parquet file being written a row group at a time (a shard too large to hold in
    memory): invisible until :meth:`publish`, gone after :meth:`discard`."""

    def __init__(
        self, writer: pq.ParquetWriter, publish: Callable[[], int], discard: Callable[[], None], where: str
    ) -> None:
        self._writer = writer
        self._publish = publish
        self._discard = discard
        self.where = where
        self.rows = 0  # rows written so far

    def write(self, table: pa.Table) -> None:
        try:
            self._writer.write_table(table)
            self.rows += table.num_rows
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"write {self.where}: {short(e)}") from None

    def label(self, metadata: dict[bytes, bytes]) -> None:
        """Key-value metadata for the file's footer (written on ``publish``)."""
        self._writer.add_key_value_metadata(metadata)

    def publish(self) -> int:
        """Finish the file and make it appear whole; returns its size in bytes."""
        try:
            return self._publish()
        except (OSError, pa.ArrowException) as e:
            self.discard()
            raise StorageError(f"write {self.where}: {short(e)}") from None

    def discard(self) -> None:
        self._discard()


class Store(Protocol):
    """What the lake needs of a place to keep its bytes."""

    local: bool
    where: str  # the lake as messages name it (a path, or a URI without credentials)

    def check_usable(self) -> None: ...
    def prepare(self) -> None: ...
    def read(self, key: str) -> bytes | None: ...
    def open_file(self, key: str) -> pa.NativeFile | None: ...
    def write(self, key: str, data: bytes | pa.Buffer) -> int: ...
    def stage_table(self, key: str, schema: pa.Schema, **options: Any) -> StagedTable: ...
    def delete(self, key: str) -> None: ...
    def move(self, src: str, dst: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...
    def has_data(self) -> bool: ...
    def create_exclusive(self, key: str, data: bytes, replacing: bytes | None = None) -> bool: ...
    def cleanup(self, mine: Callable[[str], bool]) -> int: ...


def read_json(store: Store, key: str) -> dict[str, Any] | None:
    """A JSON object kept at ``key``; None when it is missing, torn or not an object."""
    data = store.read(key)
    return None if data is None else parse_json(data)


def parse_json(data: bytes) -> dict[str, Any] | None:
    """A JSON object; None when the bytes are torn or not an object."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__
