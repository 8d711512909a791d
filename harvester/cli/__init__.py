"""The command line (``vobiz-harvest``), one module per command."""

from harvester.cli.main import main

__all__ = ["main"]
