"""Decoding beside the event loop: page bodies → Arrow in worker processes.

orjson and the Arrow conversion hold the GIL and are most of the event loop's work, so a
thread would not help; a process does. The workers are forked when the run starts, before
any connection or thread of ours exists, so they cost no second start-up (the modules are
already imported). Each talks to the loop over a socket pair:

    request   <QBQIIQ> request id, op, shard job, asked page, asked per_page, body length · body
    response  <QBII>   request id, ok · meta length, payload length · meta JSON · payload

Two ways to use a worker:

* ``DECODE`` a page: the answer carries what :func:`harvester.decode.decode_page` gives (the
  page's own numbers, and its records as a zero-copy Arrow message).
* A :class:`ShardJob`: every page of one shard goes to the same worker, which keeps the
  records (``KEEP``) and answers with the page's numbers only. ``FINISH`` joins, deduplicates
  and orders them, sums the reconciled columns and encodes the Parquet file; the answer
  carries the file's bytes. No records cross the socket back and the loop's process never
  holds them: on loopback 7% less CPU and 8% less time than answering every page with its
  records. ``DROP`` forgets a job's pages (no answer).

A body a worker cannot decode comes back as an error; a worker that dies fails its requests
the same way and the pool is not used again. Either way the engine fetches again without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from harvester.assemble import dedupe, order
from harvester.decode import RAW, Collector, DecodeError, Page, Part, decode_page
from harvester.lake import WRITE_OPTIONS
from harvester.schema import SCHEMA
from harvester.store import parquet_bytes
from harvester.verify import missing_uuids, table_sums

log = logging.getLogger("harvester.workers")
_REQUEST = struct.Struct("<QBQIIQ")
DECODE, KEEP, FINISH, DROP = range(4)
# Socket buffers (the kernel caps them at net.core.wmem_max): with the default ~200 KB a
# worker woke up about twice per page body; measured 6% faster runs with 4 MB.
SOCKET_BUFFER = 4 << 20
_RESPONSE = struct.Struct("<QBII")
_RAW_SCHEMA = pa.schema([pa.field("r", RAW)])


def auto_workers() -> int:
    """Decode workers for this machine: one per core, at most 3 (one event loop fetches about
    as fast as three decode), none on one core or where there is no fork. On two cores, two
    workers measured 37% faster than one for the same CPU: a worker decodes and encodes slower
    than the loop fetches (``python -m benchmarks --scenario workers``)."""
    cores = os.cpu_count() or 1
    if not hasattr(os, "fork") or sys.platform != "linux" or cores < 2:
        return 0
    return min(3, cores)


def _recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def _numbers(page: Page) -> dict[str, Any]:
    """A page's own numbers, as the loop needs them."""
    return {
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "has_next": page.has_next,
        "summary": page.summary,
        "rows": page.rows,
    }


def _decoded(page: Page) -> tuple[dict[str, Any], Any]:
    """``DECODE``: the page's numbers, and its records as an Arrow IPC message."""
    meta, part = _numbers(page), page.part
    if part.done is not None:
        meta["kind"] = "done"
        return meta, part.done.serialize()
    if part.raw is not None:
        meta["kind"] = "raw"
        meta["unknown"] = part.unknown
        return meta, pa.RecordBatch.from_arrays([part.raw], schema=_RAW_SCHEMA).serialize()
    meta["kind"] = "empty"
    return meta, b""


def _finished(got: Collector, by_account: bool) -> tuple[dict[str, Any], Any]:
    """``FINISH``: a kept shard joined, deduplicated and ordered as its file holds it, with
    the reconciled sums, and the Parquet file's bytes (none for an empty shard)."""
    table = order(dedupe(got.table()), by_account)
    meta = {
        "kind": "encoded",
        "rows": table.num_rows,
        "missing": missing_uuids(table),
        "sums": table_sums(table),
    }
    return meta, parquet_bytes(table, **WRITE_OPTIONS) if table.num_rows else b""


def _answer(
    jobs: dict[int, Collector], op: int, job: int, asked_page: int, per_page: int, body: bytes | bytearray
) -> tuple[bool, bytes, Any]:
    """One request → (ok, meta JSON, payload: an Arrow message, Parquet bytes or nothing)."""
    try:
        if op == FINISH:
            options = orjson.loads(body) if body else {}
            got = jobs.pop(job) if job in jobs else Collector()
            meta, payload = _finished(got, bool(options.get("by_account")))
            return True, orjson.dumps(meta), payload
        page = decode_page(body, asked_page, per_page)
        if op == KEEP:
            jobs.setdefault(job, Collector()).add(page)
            return True, orjson.dumps({**_numbers(page), "kind": "kept"}), b""
        meta, payload = _decoded(page)
        return True, orjson.dumps(meta), payload
    except Exception as e:  # any failure: the loop fetches and decodes that page itself
        if op == KEEP:
            jobs.pop(job, None)  # a job with a page missing is of no use: the loop drops it
        return False, orjson.dumps({"error": str(e) or type(e).__name__}), b""


def _serve(sock: socket.socket) -> None:
    """A worker's life: answer requests until the loop closes its end."""
    gc.disable()  # decoding makes no reference cycles; collecting them would be wasted work
    jobs: dict[int, Collector] = {}  # the shards whose pages this worker keeps
    while True:
        head = _recv_exactly(sock, _REQUEST.size)
        if head is None:
            return
        rid, op, job, asked_page, per_page, size = _REQUEST.unpack(head)
        body = _recv_exactly(sock, size)
        if body is None:
            return
        if op == DROP:
            jobs.pop(job, None)
            continue
        ok, meta, payload = _answer(jobs, op, job, asked_page, per_page, body)
        sock.sendall(_RESPONSE.pack(rid, ok, len(meta), len(payload)) + meta)
        if len(payload):
            sock.sendall(payload)


def _page(meta: dict[str, Any], arrow: bytes) -> Page:
    """A worker's answer → a page (``kept``: its numbers only, the records stay there)."""
    kind = meta["kind"]
    if kind == "done":
        part = Part(meta["rows"], done=pa.ipc.read_record_batch(pa.py_buffer(arrow), SCHEMA))
    elif kind == "raw":
        raw = pa.ipc.read_record_batch(pa.py_buffer(arrow), _RAW_SCHEMA).column(0)
        part = Part(meta["rows"], raw, meta.get("unknown"))
    elif kind in ("empty", "kept"):
        part = Part(meta["rows"] if kind == "kept" else 0)
    else:
        raise KeyError(f"answer of kind {kind!r}")
    return Page(
        part, meta["page"], meta["per_page"], meta["total"], meta["pages"], meta["has_next"], meta["summary"]
    )


@dataclass(frozen=True)
class Encoded:
    """A shard a decode worker joined and encoded: its distinct rows, the reconciled sums,
    and its Parquet file's bytes (empty when it has no rows), not yet written."""

    rows: int
    sums: dict[str, float]
    data: bytes
    missing: int = 0  # rows without a uuid


_Answer = tuple[dict[str, Any], bytes]


@dataclass
class _Worker:
    pid: int
    sock: socket.socket
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    pending: dict[int, asyncio.Future[_Answer]] = field(default_factory=dict)
    jobs: int = 0  # shard jobs open on this worker


class DecodePool:
    """Forked decode workers, and the event loop's side of their sockets."""

    def __init__(self, workers: int) -> None:
        self._workers: list[_Worker] = []
        self._next_id = 0
        self._next_job = 0
        self._connected: asyncio.Future[None] | None = None
        self.broken = False
        for _ in range(workers):
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                for end in (ours, theirs):  # a page body in one write, not in 200 KB slices
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                pid = os.fork()
            except OSError as e:  # out of processes or memory: decode on the loop instead
                log.warning("cannot start a decode worker (%s); decoding on the event loop", e)
                break
            if pid == 0:  # the worker
                code = 0
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the loop, which closes us
                    ours.close()
                    for w in self._workers:
                        w.sock.close()
                    _serve(theirs)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            theirs.close()
            self._workers.append(_Worker(pid, ours))
        self.broken = not self._workers

    async def _connect(self) -> None:
        """Attach every worker's socket to the running loop (once, on first use)."""
        for w in self._workers:
            w.reader, w.writer = await asyncio.open_unix_connection(sock=w.sock, limit=1 << 20)
            w.task = asyncio.ensure_future(self._read(w))

    async def _read(self, w: _Worker) -> None:
        assert w.reader is not None
        try:
            while True:
                head = await w.reader.readexactly(_RESPONSE.size)
                rid, ok, meta_len, payload_len = _RESPONSE.unpack(head)
                meta = orjson.loads(await w.reader.readexactly(meta_len))
                payload = await w.reader.readexactly(payload_len) if payload_len else b""
                fut = w.pending.pop(rid, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result((meta, payload))
                else:
                    fut.set_exception(DecodeError(meta.get("error", "decode worker failed")))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as e:  # an answer out of step with the protocol: stop trusting the workers
            log.warning("decode worker answer unreadable (%s); decoding on the event loop", e)
        finally:  # a worker died, the pool closed, or anything else: fail what it had, use no more
            self.broken = True
            for fut in w.pending.values():
                if not fut.done():
                    fut.set_exception(DecodeError("decode worker exited"))
            w.pending.clear()

    async def _ready(self) -> None:
        if self.broken or not self._workers:
            raise DecodeError("decode workers unavailable")
        if self._connected is None:
            self._connected = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connected)
        except OSError as e:
            self.broken = True
            raise DecodeError(f"decode workers unreachable ({e})") from None

    def _send(self, w: _Worker, op: int, job: int, asked_page: int, per_page: int, body: bytes) -> int:
        """Write one request (not waiting for the socket to drain); returns its id."""
        assert w.writer is not None
        if w.writer.is_closing():
            raise DecodeError("decode worker closed")
        self._next_id += 1
        w.writer.write(_REQUEST.pack(self._next_id, op, job, asked_page, per_page, len(body)))
        if body:
            w.writer.write(body)
        return self._next_id

    async def _ask(
        self, w: _Worker, op: int, job: int, asked_page: int, per_page: int, body: bytes
    ) -> _Answer:
        """A request to worker ``w`` and its answer; raises :class:`DecodeError`."""
        await self._ready()
        assert w.writer is not None
        fut: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        try:
            rid = self._send(w, op, job, asked_page, per_page, body)
            w.pending[rid] = fut
            await w.writer.drain()
        except (ConnectionError, OSError) as e:
            fut.cancel()
            self.broken = True
            raise DecodeError(f"decode worker unreachable ({type(e).__name__})") from None
        return await fut

    async def decode(self, body: bytes, asked_page: int, per_page: int) -> Page:
        """A page body decoded by the least busy worker; raises :class:`DecodeError`."""
        await self._ready()
        w = min(self._workers, key=lambda x: len(x.pending))
        meta, arrow = await self._ask(w, DECODE, 0, asked_page, per_page, body)
        try:
            return _page(meta, arrow)
        except (pa.ArrowException, KeyError, TypeError) as e:
            raise DecodeError(f"decode worker answer unreadable: {e}") from None

    def shard_job(self) -> ShardJob:
        """A job on the worker with the fewest open jobs: it will keep one shard's pages."""
        if self.broken or not self._workers:
            raise DecodeError("decode workers unavailable")
        w = min(self._workers, key=lambda x: (x.jobs, len(x.pending)))
        self._next_job += 1
        return ShardJob(self, w, self._next_job)

    async def close(self) -> None:
        """End the workers' input (they exit on end of file) and reap them."""
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.sock.shutdown(socket.SHUT_RDWR)
            if w.writer is not None:
                w.writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.writer.wait_closed()
            if w.task is not None:
                w.task.cancel()
            with contextlib.suppress(OSError):
                w.sock.close()
        for w in self._workers:
            for _ in range(100):  # a worker finishes the page it is on, then exits
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(w.pid, os.WNOHANG)[0]:
                        break
                    await asyncio.sleep(0.02)
                    continue
                break
            else:
                with contextlib.suppress(OSError):
                    os.kill(w.pid, signal.SIGKILL)
                    os.waitpid(w.pid, 0)
        self._workers = []


class ShardJob:
    """One shard's pages kept by one worker, then joined and encoded there (:meth:`finish`).
    Close it in a ``finally``: a job that did not finish is dropped by the worker."""

    def __init__(self, pool: DecodePool, worker: _Worker, job: int) -> None:
        self._pool, self._w, self._job = pool, worker, job
        self._open = True
        worker.jobs += 1

    async def keep(self, body: bytes, asked_page: int, per_page: int) -> Page:
        """Hand a page body to the job's worker; returns its numbers (no records)."""
        meta, _ = await self._pool._ask(self._w, KEEP, self._job, asked_page, per_page, body)
        try:
            return _page(meta, b"")
        except (KeyError, TypeError) as e:
            raise DecodeError(f"decode worker answer unreadable: {e}") from None

    async def finish(self, by_account: bool) -> Encoded:
        """The shard as its file holds it, encoded; the worker forgets the job."""
        options = orjson.dumps({"by_account": by_account})
        self._close(drop=False)
        meta, data = await self._pool._ask(self._w, FINISH, self._job, 0, 0, options)
        try:
            sums = {k: float(v) for k, v in meta["sums"].items()}
            return Encoded(int(meta["rows"]), sums, data, int(meta["missing"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DecodeError(f"decode worker answer unreadable: {e}") from None

    def close(self) -> None:
        self._close(drop=True)

    def _close(self, drop: bool) -> None:
        if not self._open:
            return
        self._open = False
        self._w.jobs -= 1
        if drop and not self._pool.broken:
            with contextlib.suppress(DecodeError, ConnectionError, OSError, AssertionError):
                self._pool._send(self._w, DROP, self._job, 0, 0, b"")
