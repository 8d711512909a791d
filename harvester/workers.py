"""Decoding beside the event loop: page bodies → Arrow in worker processes.

orjson and the Arrow conversion hold the GIL and are most of the event loop's work, so a
thread would not help; a process does. The workers are forked when the run starts, before
any connection or thread of ours exists, so they cost no second start-up (the modules are
already imported). Each talks to the loop over a socket pair:

    request   <QII> request id, asked page, asked per_page · <Q> body length · body
    response  <QB>  request id, ok · <II> meta length, Arrow length · meta JSON · Arrow IPC

A response carries what :func:`harvester.decode.decode_page` gives (the page's own numbers,
and its records as the fast path's raw struct or a finished batch), so the loop's only work
per page is HTTP and a zero-copy read of the Arrow message. A body a worker cannot decode
comes back as an error (the engine fetches that page again and decodes it on the loop); a
worker that dies fails its pages the same way and the pool is not used again.
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

from harvester.decode import RAW, DecodeError, Page, Part, decode_page
from harvester.schema import SCHEMA

log = logging.getLogger("harvester.workers")
_REQUEST = struct.Struct("<QIIQ")
_RESPONSE = struct.Struct("<QBII")
_RAW_SCHEMA = pa.schema([pa.field("r", RAW)])


def auto_workers() -> int:
    """Decode workers for this machine: one per core, at most 3 (one event loop fetches about
    as fast as three decode), none on one core or where there is no fork. On two cores, two
    workers measured 20% faster than one for 2-8% more CPU: a worker decodes slower than the
    loop fetches (``python -m benchmarks --scenario workers``)."""
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


def _answer(asked_page: int, per_page: int, body: bytes | bytearray) -> tuple[bool, bytes, bytes]:
    """One page body → (ok, meta JSON, Arrow IPC message)."""
    try:
        page = decode_page(body, asked_page, per_page)
    except DecodeError as e:
        return False, orjson.dumps({"error": str(e)}), b""
    part = page.part
    meta: dict[str, Any] = {
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "has_next": page.has_next,
        "summary": page.summary,
        "rows": part.rows,
    }
    if part.done is not None:
        meta["kind"] = "done"
        arrow = part.done.serialize().to_pybytes()
    elif part.raw is not None:
        meta["kind"] = "raw"
        meta["unknown"] = part.unknown
        batch = pa.RecordBatch.from_arrays([part.raw], schema=_RAW_SCHEMA)
        arrow = batch.serialize().to_pybytes()
    else:
        meta["kind"] = "empty"
        arrow = b""
    return True, orjson.dumps(meta), arrow


def _serve(sock: socket.socket) -> None:
    """A worker's life: answer requests until the loop closes its end."""
    gc.disable()  # decoding makes no reference cycles; collecting them would be wasted work
    while True:
        head = _recv_exactly(sock, _REQUEST.size)
        if head is None:
            return
        rid, asked_page, per_page, size = _REQUEST.unpack(head)
        body = _recv_exactly(sock, size)
        if body is None:
            return
        ok, meta, arrow = _answer(asked_page, per_page, body)
        sock.sendall(_RESPONSE.pack(rid, ok, len(meta), len(arrow)) + meta)
        if arrow:
            sock.sendall(arrow)


def _page(meta: dict[str, Any], arrow: bytes) -> Page:
    kind = meta["kind"]
    if kind == "done":
        part = Part(meta["rows"], done=pa.ipc.read_record_batch(pa.py_buffer(arrow), SCHEMA))
    elif kind == "raw":
        raw = pa.ipc.read_record_batch(pa.py_buffer(arrow), _RAW_SCHEMA).column(0)
        part = Part(meta["rows"], raw, meta.get("unknown"))
    else:
        part = Part(0)
    return Page(
        part, meta["page"], meta["per_page"], meta["total"], meta["pages"], meta["has_next"], meta["summary"]
    )


@dataclass
class _Worker:
    pid: int
    sock: socket.socket
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    pending: dict[int, asyncio.Future[Page]] = field(default_factory=dict)


class DecodePool:
    """Forked decode workers, and the event loop's side of their sockets."""

    def __init__(self, workers: int) -> None:
        self._workers: list[_Worker] = []
        self._next_id = 0
        self._connected: asyncio.Future[None] | None = None
        self.broken = False
        for _ in range(workers):
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
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
                rid, ok, meta_len, arrow_len = _RESPONSE.unpack(head)
                meta = orjson.loads(await w.reader.readexactly(meta_len))
                arrow = await w.reader.readexactly(arrow_len) if arrow_len else b""
                fut = w.pending.pop(rid, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    try:
                        fut.set_result(_page(meta, arrow))
                    except (pa.ArrowException, KeyError, TypeError) as e:
                        fut.set_exception(DecodeError(f"decode worker answer unreadable: {e}"))
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

    async def decode(self, body: bytes, asked_page: int, per_page: int) -> Page:
        """A page body decoded by the least busy worker; raises :class:`DecodeError`."""
        if self.broken or not self._workers:
            raise DecodeError("decode workers unavailable")
        if self._connected is None:
            self._connected = asyncio.ensure_future(self._connect())
        try:
            await asyncio.shield(self._connected)
        except OSError as e:
            self.broken = True
            raise DecodeError(f"decode workers unreachable ({e})") from None
        w = min(self._workers, key=lambda x: len(x.pending))
        assert w.writer is not None
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        w.pending[rid] = fut
        try:
            w.writer.write(_REQUEST.pack(rid, asked_page, per_page, len(body)))
            w.writer.write(body)
            await w.writer.drain()
        except (ConnectionError, OSError) as e:
            w.pending.pop(rid, None)
            fut.cancel()
            self.broken = True
            raise DecodeError(f"decode worker unreachable ({type(e).__name__})") from None
        return await fut

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
