"""A lake on an object store (``s3://``, ``gs://``, ``abfs://`` … through ``pyarrow.fs``).

Object stores have no rename, so each object is written straight to its final key: it
becomes visible only when its upload completes (single PUT, or multipart completed on
close). A killed run leaves at most an unfinished multipart upload, invisible to readers,
which the next run aborts. Transient storage errors (503 SlowDown, resets) are retried with
backoff, separately from the API's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from harvester.errors import LakeError, StorageError, UsageError
from harvester.lake.crashpoints import crash_point
from harvester.lake.store import StagedTable, check_key, short

log = logging.getLogger("harvester.lake.objects")
T = TypeVar("T")


class ObjectStore:
    """An object-store prefix (``s3://bucket/prefix`` and whatever else pyarrow.fs supports)."""

    local = False
    ATTEMPTS = 6

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.where = self.uri  # how messages name the lake
        parts = urlsplit(self.uri)
        self.scheme = parts.scheme
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._boto: Any = None  # a boto3 client, made when first needed (see _s3_client)
        try:
            if self.scheme == "s3":
                kw: dict[str, Any] = {
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=4),
                    "connect_timeout": 10,
                    "request_timeout": 60,
                }
                if endpoint_url:
                    ep = urlsplit(endpoint_url)
                    kw["endpoint_override"] = ep.netloc
                    kw["scheme"] = ep.scheme or "https"
                if region:
                    kw["region"] = region
                self.fs: pafs.FileSystem = pafs.S3FileSystem(**kw)
                self.base = f"{self.bucket}/{self.prefix}".rstrip("/")
            else:
                self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as e:
            raise UsageError(f"--out {uri}: {short(e)}") from None

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.base}/{key}" if self.base else key

    def check_usable(self) -> None:
        try:
            info = self.fs.get_file_info(self.bucket if self.scheme == "s3" else self.base)
        except (OSError, pa.ArrowException) as e:
            raise LakeError(f"--out {self.uri}: {short(e)}") from None
        if self.scheme == "s3" and info.type == pafs.FileType.NotFound:
            raise UsageError(f"--out {self.uri}: bucket {self.bucket!r} does not exist: create it first")

    def prepare(self) -> None:
        return None  # object stores have no directories to create

    def read(self, key: str) -> bytes | None:
        def op() -> bytes | None:
            try:
                with self.fs.open_input_stream(self._full(key)) as f:
                    return bytes(f.read())
            except FileNotFoundError:
                return None

        return _retry(self.uri, "read", op)

    def open_file(self, key: str) -> pa.NativeFile | None:
        """``key`` open for random access: ranged reads of what is asked (a Parquet footer
        alone costs one or two), retried by pyarrow's own retry strategy; None when missing."""

        def op() -> pa.NativeFile | None:
            try:
                return self.fs.open_input_file(self._full(key))
            except FileNotFoundError:
                return None

        return _retry(self.uri, "read", op)

    def write(self, key: str, data: bytes | pa.Buffer) -> int:
        """Upload ``data`` so the object appears whole and durable when its upload
        completes (retried; the data is encoded once, whatever the retries)."""

        def op() -> int:
            sink = self.fs.open_output_stream(self._full(key))
            try:
                sink.write(data)
            except BaseException:
                with contextlib.suppress(Exception):
                    sink.abort()
                raise
            return _complete_upload(sink)

        return _retry(self.uri, f"write {key} to", op)

    def stage_table(self, key: str, schema: pa.Schema, **options: Any) -> StagedTable:
        """A Parquet object uploaded a row group at a time (multipart), that appears whole
        on ``publish``; ``discard`` aborts the upload. Not retried: a failure fails the shard."""
        try:
            sink = self.fs.open_output_stream(self._full(key))
            writer = pq.ParquetWriter(sink, schema, **options)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"write {key} to {self.uri}: {short(e)}") from None

        def publish() -> int:
            writer.close()
            return _complete_upload(sink)

        def discard() -> None:
            with contextlib.suppress(Exception):
                sink.abort()

        return StagedTable(writer, publish, discard, f"{self.uri}/{key}")

    def move(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` on the server (``dst`` appears whole when the copy
        completes), then delete ``src``."""

        def op() -> None:
            self.fs.copy_file(self._full(src), self._full(dst))

        _retry(self.uri, "copy within", op)
        self.delete(src)

    def delete(self, key: str) -> None:
        def op() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._full(key))

        _retry(self.uri, "delete from", op)

    def keys(self, prefix: str) -> list[str]:
        def op() -> list[str]:
            where = self._full(prefix) if prefix else self.base  # "": the whole lake
            sel = pafs.FileSelector(where, recursive=True, allow_not_found=True)
            infos = self.fs.get_file_info(sel)
            cut = len(self.base) + 1 if self.base else 0
            return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

        return _retry(self.uri, "list", op)

    def has_data(self) -> bool:
        def op() -> bool:
            sel = pafs.FileSelector(self.base, recursive=False, allow_not_found=True)
            return any(i.base_name.startswith("date=") for i in self.fs.get_file_info(sel))

        return _retry(self.uri, "list", op)

    def create_exclusive(self, key: str, data: bytes, replacing: bytes | None = None) -> bool:
        """Create ``key`` unless it exists (False then); given ``replacing``, replace it
        instead, only while it still holds exactly those bytes (False otherwise). On S3 (with
        boto3) one conditional PUT: ``If-None-Match: *`` to create, ``If-Match`` the ETag of
        the object compared to replace, which S3 refuses once the object has changed: of two
        takers only one creates or replaces it. Elsewhere best effort: read, then write.
        Either way the lock reads its object back (a store may ignore the condition)."""
        client = _s3_client(self) if self.scheme == "s3" else None
        if client is None:
            if self.read(key) != replacing:
                return False
            self.write(key, data)
            return True
        full = f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)
        if replacing is None:
            return self.read(key) is None and _put_if(client, self, full, data, IfNoneMatch="*")
        try:
            got = client.get_object(Bucket=self.bucket, Key=full)
            now, etag = got["Body"].read(), got["ETag"]
        except Exception as e:
            if _code(e) in ("NoSuchKey", "404"):
                return False  # gone: the caller creates it
            raise StorageError(f"read {key} from {self.uri}: {short(e)}") from None
        return now == replacing and _put_if(client, self, full, data, IfMatch=etag)

    def cleanup(self, mine: Callable[[str], bool]) -> int:
        """Abort unfinished multipart uploads under the lake's prefix (a killed run's), of the
        keys ``mine`` says this run owns."""
        client = _s3_client(self) if self.scheme == "s3" else None
        if client is None:
            return 0
        n = 0
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    if not mine(up["Key"][len(prefix) :]):
                        continue
                    client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        except Exception as e:
            log.warning("could not abort unfinished uploads under %s: %s", self.uri, short(e))
        if n:
            log.info("aborted %d unfinished multipart uploads under %s", n, self.uri)
        return n


def _s3_client(store: ObjectStore) -> Any:
    """The store's boto3 S3 client (made once), for what pyarrow.fs does not offer:
    conditional PUTs, listing unfinished uploads. None where boto3 is not installed."""
    if store._boto is None and (boto3 := _boto3()) is not None:
        store._boto = boto3.client("s3", endpoint_url=store.endpoint_url, region_name=store.region)
    return store._boto


def _put_if(client: Any, store: ObjectStore, full: str, data: bytes, **condition: str) -> bool:
    """One conditional PUT; False when S3 refuses its condition."""
    try:
        client.put_object(Bucket=store.bucket, Key=full, Body=data, **condition)
    except Exception as e:  # botocore's ClientError, or a connection error
        if _code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412"):
            return False  # changed, or another taker's write is in flight
        raise StorageError(f"write {full} to {store.uri}: {short(e)}") from None
    return True


def _code(e: BaseException) -> str | None:
    """The error code of a botocore ClientError (None for any other error)."""
    code = getattr(e, "response", {}).get("Error", {}).get("Code")
    return str(code) if code is not None else None


@functools.cache
def _boto3() -> Any:
    """boto3 (the ``s3`` extra), or None, said once, where it is not installed."""
    try:
        import boto3
    except ImportError:
        log.warning("boto3 is not installed: the lake's lock on S3 is best effort and unfinished "
                    "uploads of a killed run are left to the bucket's lifecycle rules "
                    "(pip install 'vobiz-harvester[s3]')")  # fmt: skip
        return None
    return boto3


def _complete_upload(sink: pa.NativeFile) -> int:
    """Finish an object's upload: the object appears now, whole; returns its size."""
    crash_point("before-upload-complete")
    size = sink.tell()
    sink.close()
    return int(size)


def _retry(uri: str, what: str, op: Callable[[], T]) -> T:
    """``op``, retried with backoff on transient storage errors (a missing object is not)."""
    for attempt in range(ObjectStore.ATTEMPTS):
        try:
            return op()
        except (OSError, pa.ArrowException) as e:
            if isinstance(e, FileNotFoundError) or attempt == ObjectStore.ATTEMPTS - 1:
                raise StorageError(f"{what} {uri}: {short(e)}") from None
            delay = random.uniform(0.5, 1.0) * min(8.0, 0.2 * 2**attempt)
            log.info("storage retry %d for %s: %s", attempt + 1, what, short(e))
            time.sleep(delay)
    raise AssertionError("unreachable")
