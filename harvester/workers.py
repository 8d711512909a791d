"""Decoding off the event loop: page bodies → Arrow in a worker process.

The event loop's own work per page is HTTP; orjson and the Arrow conversion
(about two thirds of the harvester's CPU) hold the GIL, so a thread would not help. A small
process pool takes a closed day's pages 2..N in chunks and hands back Arrow tables, so on a
machine with two cores the HTTP and the decoding run side by side. Page 1 of every shard is
still decoded on the loop: its ``pagination`` decides how many pages there are.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa

from harvester.decode import Collector, DecodeError, decode_page

CHUNK_PAGES = 20


def decode_bodies(bodies: list[bytes], per_page: int) -> pa.Table:
    """Runs in a worker: page bodies → one Arrow table (raises DecodeError on a bad page)."""
    got = Collector()
    for body in bodies:
        got.add(decode_page(body, 0, per_page))
    return got.table()


def sane_body(body: bytes) -> bytes:
    """The cheap check done on the loop: a JSON object, not a proxy's HTML page or a stub."""
    head, tail = body[:1], body.rstrip()[-1:]
    if head != b"{" or tail != b"}":
        raise DecodeError(f"body is not a JSON object ({len(body)} bytes)")
    return body


class DecodePool:
    """A process pool for :func:`decode_bodies` (forkserver: no fork of a threaded process)."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["harvester.workers"])
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    async def decode(self, bodies: list[bytes], per_page: int) -> pa.Table:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, decode_bodies, bodies, per_page)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
