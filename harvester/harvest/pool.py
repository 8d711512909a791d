"""Decoding beside the event loop: page bodies → Arrow in worker processes.

orjson and the Arrow conversion hold the GIL and are most of a harvest's CPU, so a thread
would not help; a process does. The pool is the standard library's
:class:`~concurrent.futures.ProcessPoolExecutor` with the ``forkserver`` start method
(``spawn`` where there is none): each worker is forked from a small server process that has
imported the decoder, never from the harvester's own process, so no worker inherits a
running event loop, its threads or its sockets.

A worker answers one of two requests, each request and answer in a scratch file so that
the pool's pipes carry only file names (see :func:`_answer`: a worker killed mid-answer must
not stall the pool):

* ``decode``: one page body → the page's own numbers and its records as an Arrow IPC message;
* ``encode``: all the page bodies of a closed day → each page's numbers, and the shard
  joined, deduplicated, ordered, summed and encoded as its Parquet file, so the harvester's
  own process only fetches and writes the bytes (no records cross back). The bodies reach
  the worker through a :class:`Spill`, a scratch file written as the pages arrive and read
  back a page at a time: neither process holds a day of JSON (a day of the partner feed is
  tens of MB of it), and nothing is pickled through the pool's pipe but the file's name.

Whatever goes wrong in a worker comes back as :class:`DecodeError`, and the engine then
fetches and decodes those pages itself; a pool whose process died is not used again
(``broken``). The harvester runs the same code path without a pool: only where a page is
decoded differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from harvester.errors import DecodeError
from harvester.lake.days import block_label
from harvester.lake.lock import pid_alive
from harvester.records.assemble import dedupe, order
from harvester.records.decode import RAW, Collector, Page, Part, decode_page
from harvester.records.encoding import parquet_bytes
from harvester.records.schema import SCHEMA
from harvester.records.verify import accounts_in, missing_uuids, table_sums

log = logging.getLogger("harvester.workers")
_RAW_SCHEMA = pa.schema([pa.field("r", RAW)])


def _answer(value: Any, beside: str) -> str:
    """In a worker: ``value`` pickled into a new file beside ``beside``; its name. Answers and
    page bodies cross in scratch files so that what the pool's pipes carry is a file's name:
    a worker killed while it writes (the OOM killer, say) leaves at most a small message,
    which a pipe takes whole or not at all, never half of one that would stall the pool's
    reader (a partly written answer would; Python's pool has no timeout on that read)."""
    fd, path = tempfile.mkstemp(suffix=".answer", dir=os.path.dirname(beside))
    with os.fdopen(fd, "wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _take(path: str) -> Any:
    """A worker's answer (:func:`_answer`), its file removed; :class:`DecodeError` when it
    cannot be read back."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DecodeError(f"decode worker answer unreadable: {e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _decode_file(path: str, asked_page: int, per_page: int) -> str:
    """In a worker: the page body in file ``path`` (removed once read) decoded; the name of
    the file holding :func:`_decode`'s answer."""
    with open(path, "rb") as f:
        body = f.read()
    os.unlink(path)
    return _answer(_decode(body, asked_page, per_page), path)


def _encode_file(path: str, *args: Any) -> str:
    """In a worker: :func:`_encode` of the spill file ``path``; the name of its answer's file."""
    return _answer(_encode(path, *args), path)


def _decode(body: bytes, asked_page: int, per_page: int) -> tuple[dict[str, Any], str, bytes]:
    """In a worker: a page body → (its numbers, the kind of records, an Arrow IPC message),
    or ``({"error": why}, "error", b"")``."""
    try:
        page = decode_page(body, asked_page, per_page)
        numbers = _numbers(page)
        part = page.part
        if part.done is not None:
            return numbers, "done", part.done.serialize().to_pybytes()
        if part.raw is not None:
            batch = pa.RecordBatch.from_arrays([part.raw], schema=_RAW_SCHEMA)
            return numbers, "raw", batch.serialize().to_pybytes()
        return numbers, "empty", b""
    except Exception as e:  # any failure: the loop fetches and decodes the page itself
        return {"error": str(e) or type(e).__name__}, "error", b""


@dataclass(frozen=True)
class Encoded:
    """A shard a worker encoded: each page's numbers (page 1 first), the file's distinct
    rows, rows without a uuid, the reconciled sums, and the Parquet file (empty: no rows)."""

    pages: list[Page]
    rows: int
    missing: int
    sums: dict[str, float]
    data: bytes
    accounts: frozenset[str | None]


class Spill:
    """The page bodies of one shard in a scratch file, written as they arrive (``add``, on
    the event loop: a write to the page cache) and read back by a worker a page at a time."""

    # A day held whole is at most --stream-rows records (about 55 MB of bodies at the default
    # 50,000): a server sending far more per record fills no disk, its shard is decoded a page
    # at a time instead.
    CAP = 256 << 20

    def __init__(self, directory: str, cap: int = CAP) -> None:
        """:class:`DecodeError` when the file cannot be made (the caller decodes itself)."""
        try:
            self._fd, self.path = tempfile.mkstemp(suffix=".bodies", dir=directory)
        except OSError as e:
            raise DecodeError(f"cannot keep page bodies in {directory} ({e.strerror})") from None
        self._end = 0
        self._cap = cap
        self._spans: dict[int, tuple[int, int]] = {}  # page → (offset, length)

    def add(self, page: int, body: bytes) -> None:
        if self._end + len(body) > self._cap:
            raise DecodeError(
                f"page bodies past {self._cap >> 20} MB for one shard: decoding them one at a time"
            )
        view = memoryview(body)
        try:
            while view:
                view = view[os.pwrite(self._fd, view, self._end + len(body) - len(view)) :]
        except OSError as e:  # e.g. a full disk: the caller decodes the pages itself
            raise DecodeError(f"cannot keep page bodies in {self.path} ({e.strerror})") from None
        self._spans[page] = (self._end, len(body))
        self._end += len(body)

    def spans(self) -> list[tuple[int, int]]:
        """Where each page's body is, page 1 first."""
        return [self._spans[n] for n in sorted(self._spans)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


_SCRATCH = "vobiz-harvest-"  # + the pid of the run, "-", random


def _scratch_dir() -> str | None:
    """A new scratch directory for this run's spilled page bodies (None, said once, when
    none can be made: pages are then decoded one at a time). Those of this user's runs that
    died first (a kill -9 leaves them) are removed: each is named for its run's pid."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{_SCRATCH}*-*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(old.name[len(_SCRATCH) :].split("-", 1)[0])
            if not old.is_symlink() and old.stat().st_uid == os.geteuid() and not pid_alive(pid):
                shutil.rmtree(old)
    try:
        return tempfile.mkdtemp(prefix=f"{_SCRATCH}{os.getpid()}-")
    except OSError as e:
        log.warning("no scratch directory for page bodies (%s); decoding pages one at a time", e)
        return None


def _read_back(path: str, spans: list[tuple[int, int]]) -> Iterator[bytes]:
    """In a worker: a spilled shard's bodies, one at a time."""
    with open(path, "rb") as f:
        for offset, length in spans:
            body = os.pread(f.fileno(), length, offset)
            if len(body) != length:
                raise DecodeError(f"{path} ended early: a page body is {len(body)} of {length} bytes")
            yield body


def _encode(
    path: str, spans: list[tuple[int, int]], per_page: int, by_account: bool, who: str
) -> tuple[Any, ...]:
    """In a worker: pages 1..N of a shard, read from its spill file → ("ok", numbers of each
    page, rows, missing, sums, file bytes), or ("error", why)."""
    try:
        got = Collector()
        numbers: list[dict[str, Any]] = []
        for body in _read_back(path, spans):  # each body is let go once decoded
            page = decode_page(body, len(numbers) + 1, per_page)
            got.add(page)
            numbers.append(_numbers(page))
        table = got.table()
        del got
        pa.default_memory_pool().release_unused()
        table = order(dedupe(table), by_account)
        pa.default_memory_pool().release_unused()
        labelled = table.replace_schema_metadata(block_label(who, table.num_rows))  # see lake.days
        data = parquet_bytes(labelled).to_pybytes() if table.num_rows else b""
        facts = (table.num_rows, missing_uuids(table), table_sums(table), data, accounts_in(table))
        del table, labelled
        # A day of the partner feed is tens of MB decoded: give it back to the system now,
        # not when the allocator next trims, or every worker keeps its largest day resident.
        pa.default_memory_pool().release_unused()
        return "ok", numbers, *facts
    except Exception as e:  # any failure: the loop fetches and decodes the shard itself
        return ("error", str(e) or type(e).__name__)


def _numbers(page: Page) -> dict[str, Any]:
    return {
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "has_next": page.has_next,
        "summary": page.summary,
        "rows": page.rows,
        "unknown": page.part.unknown,
    }


def _page(numbers: dict[str, Any], kind: str, message: bytes) -> Page:
    """A worker's answer → the page it decoded."""
    rows = numbers["rows"]
    if kind == "done":
        part = Part(rows, done=pa.ipc.read_record_batch(pa.py_buffer(message), SCHEMA))
    elif kind == "raw":
        raw = pa.ipc.read_record_batch(pa.py_buffer(message), _RAW_SCHEMA).column(0)
        part = Part(rows, raw, numbers["unknown"])
    else:  # "kept": the records stayed in the worker; "empty": there are none
        part = Part(rows if kind == "kept" else 0)
    n = numbers
    return Page(part, n["page"], n["per_page"], n["total"], n["pages"], n["has_next"], n["summary"])


def _ready() -> int:
    return os.getpid()


def _exit_with(harvester: int) -> None:
    """In a worker: end this process soon after the harvester's process is gone (killed with
    SIGKILL, say). Workers and their fork server keep each other alive, so without this a
    killed run's workers would wait for work for ever, holding its stdout and stderr open."""

    def watch() -> None:
        while True:
            time.sleep(0.2)
            try:
                os.kill(harvester, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # another process took the pid: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-harvester", daemon=True).start()


class DecodePool:
    """``workers`` decode processes, started when the pool is made (make it before the event
    loop runs, or at least before the harvest's first request)."""

    def __init__(self, workers: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods and sys.platform != "darwin" else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # The fork server imports the decoder once, and every worker forked from it
            # starts with it loaded. pandas too, where it is installed: pyarrow imports it the
            # first time it converts a list (0.5 s of CPU in each process otherwise); a
            # module that is not installed is skipped.
            context.set_forkserver_preload(["harvester.harvest.pool", "pandas"])
        self.broken = False
        self.workers = workers
        self._scratch = _scratch_dir()  # spilled page bodies (see Spill)
        self._executor = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
        )
        try:
            started = [self._executor.submit(_ready) for _ in range(workers)]
            for job in started:
                job.result(timeout=60)
        except (OSError, BrokenProcessPool, TimeoutError) as e:  # out of processes or memory
            log.warning("cannot start the decode workers (%s); decoding on the event loop", e)
            self.broken = True

    async def decode(self, body: bytes, asked_page: int, per_page: int) -> Page:
        """A page body decoded by a worker; :class:`DecodeError` on any failure."""
        if self.broken:
            raise DecodeError("decode workers unavailable")
        loop = asyncio.get_running_loop()
        path = self._scratch_file(body)
        try:
            answer = await loop.run_in_executor(self._executor, _decode_file, path, asked_page, per_page)
            numbers, kind, message = _take(answer)
        except (BrokenProcessPool, RuntimeError) as e:  # a worker died, or the pool is shut down
            self.broken = True
            raise DecodeError(f"decode worker lost ({type(e).__name__})") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # where the worker never read it
        if kind == "error":
            raise DecodeError(str(numbers.get("error")))
        try:
            return _page(numbers, kind, message)
        except (pa.ArrowException, KeyError, TypeError) as e:
            raise DecodeError(f"decode worker answer unreadable: {e}") from None

    def _scratch_file(self, body: bytes) -> str:
        """A page body in a scratch file of its own, for a worker (:class:`DecodeError` when
        there is no scratch directory or the write fails: the caller decodes the page)."""
        if self._scratch is None:
            raise DecodeError("no scratch directory for page bodies")
        try:
            fd, path = tempfile.mkstemp(suffix=".body", dir=self._scratch)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
        except OSError as e:
            raise DecodeError(f"cannot keep a page body in {self._scratch} ({e.strerror})") from None
        return path

    def spill(self) -> Spill:
        """A scratch file for a shard's page bodies, to :meth:`encode` (then close it);
        :class:`DecodeError` when there is none."""
        if self._scratch is None:
            raise DecodeError("no scratch directory for page bodies")
        return Spill(self._scratch)

    async def encode(self, spill: Spill, per_page: int, by_account: bool, who: str) -> Encoded:
        """A closed day's spilled page bodies encoded by a worker as its file;
        :class:`DecodeError` on any failure."""
        if self.broken:
            raise DecodeError("decode workers unavailable")
        loop = asyncio.get_running_loop()
        spans = spill.spans()
        try:
            answer = _take(
                await loop.run_in_executor(
                    self._executor, _encode_file, spill.path, spans, per_page, by_account, who
                )
            )
        except (BrokenProcessPool, RuntimeError) as e:
            self.broken = True
            raise DecodeError(f"decode worker lost ({type(e).__name__})") from None
        if answer[0] != "ok":
            raise DecodeError(str(answer[1]))
        _, numbers, rows, missing, sums, data, accounts = answer
        pages = [_page(n, "kept", b"") for n in numbers]
        return Encoded(pages, rows, missing, sums, data, accounts)

    def close(self) -> None:
        """Stop the workers (each finishes the page it is on), and remove the scratch files."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
