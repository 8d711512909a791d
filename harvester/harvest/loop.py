"""Running a coroutine on the fastest event loop available.

uvloop (libuv) cuts the event loop's and aiohttp's per-request overhead (the README's
Performance section has the measurement). It is a dependency on Linux and macOS; where it is
missing (Windows) the standard loop runs the same code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
