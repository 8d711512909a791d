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
- Once everything is imported, :func:`settle` moves the start-up objects out of the garbage
  collector's sight (``gc.freeze``): a harvest allocates millions of short-lived objects,
  and each full collection would otherwise walk every module, class and function again.

The first three are skipped where their library is loaded already (a notebook, the tests).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


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


def trim() -> None:
    """Call first in a CLI process, before anything imports pyarrow."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("MIMALLOC_ARENA_EAGER_COMMIT", "0")
    with _hidden("pandas"):
        import pyarrow as pa

        pa.array([])  # the first list → array conversion runs pyarrow's pandas probe


def settle() -> None:
    """Call once the run's modules are imported, just before the harvest starts."""
    gc.collect()
    gc.freeze()
