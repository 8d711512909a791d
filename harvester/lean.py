"""Start-up trims for processes the CLI owns.

The first time pyarrow builds an array from a Python list it imports pandas, if installed,
only to ask whether the list is a pandas object (≈0.2-0.3 s of CPU, a tenth of a 133k-record
harvest). The CLI never hands pyarrow a pandas object, so its processes answer that probe
"no pandas" once. pyarrow tries the import again when something really needs pandas (e.g.
``Table.to_pandas``), so nothing that uses pandas breaks.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not needed by this process")
        return None


def skip_pandas_probe() -> None:
    """Answer pyarrow's pandas probe without importing pandas (no-op if already imported)."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([])  # the first list → array conversion runs the probe
    finally:
        sys.meta_path.remove(finder)
