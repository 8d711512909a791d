"""Start-up trims for processes the CLI owns: start nothing the harvest does not use.

- pyarrow imports numpy when it is installed, and numpy starts OpenBLAS's thread pool, whose
  threads spin on a core for a while though nothing here does linear algebra. The CLI asks
  for one OpenBLAS thread (unless ``OPENBLAS_NUM_THREADS`` is set already). (Hiding numpy
  from pyarrow altogether would save its import too, but pyarrow then crashes if pandas is
  used later in the process.)
- pyarrow's allocator (mimalloc) commits each new arena whole, and the kernel zeroes it in
  huge pages up front: 5-6% of a harvest's CPU went to zeroing memory never used. The CLI
  has arenas committed as they are used (``MIMALLOC_ARENA_EAGER_COMMIT=0``).
- The first time pyarrow builds an array from a Python list it imports pandas, if installed,
  only to ask whether the list is a pandas object (≈0.2-0.3 s). The CLI answers that probe
  "no pandas" once. pyarrow tries the import again when something really needs pandas
  (e.g. ``Table.to_pandas``), so nothing that uses pandas breaks.
- aiohttp makes two SSL contexts when it is imported, and each reads and parses the system's
  CA bundle (≈25-35 ms apiece, a tenth of the CLI's start-up), though a harvest of an
  ``http://`` URL (the simulator) makes no TLS connection at all. The CLI imports aiohttp
  with contexts that read the CA certificates when they first wrap a connection
  (:class:`_VerifyPathsOnFirstUse`): the same certificates and checks, read once, and only
  when needed.
- Once everything is imported, :func:`settle` moves the start-up objects out of the garbage
  collector's sight (``gc.freeze``): a harvest allocates millions of short-lived objects,
  and each full collection would otherwise walk every module, class and function again.

The first four are skipped where their library is loaded already (a notebook, the tests).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import os
import ssl
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class _Hide(importlib.abc.MetaPathFinder):
    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == self.name or name.startswith(self.name + "."):
            raise ImportError(f"{self.name} is not needed by this process")
        return None


@contextlib.contextmanager
def _hidden(name: str) -> Iterator[None]:
    if name in sys.modules:
        yield
        return
    finder = _Hide(name)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


class _VerifyPathsOnFirstUse(ssl.SSLContext):
    """An SSL context that reads the default CA certificates (what ``create_default_context``
    and aiohttp ask for) when it first wraps a connection instead of when it is made. Until
    then it trusts no certificate: a path that skipped :meth:`_load` would fail
    verification, never pass it."""

    _paths_pending = False

    def _load(self) -> None:
        if self._paths_pending:
            self._paths_pending = False
            self.set_default_verify_paths()

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)


@contextlib.contextmanager
def _verify_paths_on_first_use() -> Iterator[None]:
    """SSL contexts made inside read their default CA certificates on first use."""
    name = "set_default_verify_paths"
    own = ssl.SSLContext.__dict__.get(name)  # None: inherited from the C base class
    asked: list[ssl.SSLContext] = []

    def defer(ctx: ssl.SSLContext) -> None:
        asked.append(ctx)

    setattr(ssl.SSLContext, name, defer)
    try:
        yield
    finally:
        if own is None:
            delattr(ssl.SSLContext, name)
        else:
            setattr(ssl.SSLContext, name, own)
        for ctx in asked:
            if type(ctx) is ssl.SSLContext:
                ctx.__class__ = _VerifyPathsOnFirstUse
                ctx._paths_pending = True  # type: ignore[attr-defined]
            else:  # a context of another kind: read them now, as it asked
                ctx.set_default_verify_paths()


def trim() -> None:
    """Call first in a CLI process, before anything imports pyarrow."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    with _hidden("pandas"):
        import pyarrow as pa

        pa.array([])  # the first list → array conversion runs pyarrow's pandas probe
    if "aiohttp" not in sys.modules:
        with _verify_paths_on_first_use():
            import aiohttp.connector  # noqa: F401  (its default SSL contexts are made here)


def settle() -> None:
    """Call once the run's modules are imported, just before the harvest starts. (No
    ``gc.collect`` first: start-up leaves no cyclic garbage to free, and the collection
    cost 17 ms.)"""
    gc.freeze()
