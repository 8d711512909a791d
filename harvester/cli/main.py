"""The ``vobiz-harvest`` command line: one module per command (harvest, sim, demo, get,
accounts, probe-dates, bench, compact), assembled here.

Every error an operator can cause ends as one line on stderr and an exit code, never a
traceback: see :mod:`harvester.errors` for the codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from harvester.cli import bench, compact, demo, harvest, lookups, sim
from harvester.cli.common import PROG, Parser
from harvester.cli.settings import given_on_command_line, load_toml
from harvester.errors import EXIT_FATAL, HarvestError, clean
from harvester.logs import JOURNAL, setup
from harvester.version import __version__

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "harvest": harvest.command,
    "sim": sim.command,
    "demo": demo.command,
    "get": lookups.command,
    "accounts": lookups.command,
    "probe-dates": lookups.command,
    "bench": bench.command,
    "compact": compact.command,
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Bulk-harvest Vobiz call detail records into Parquet.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    harvest.add_parser(sub)
    sim.add_parser(sub)
    demo.add_parser(sub)
    lookups.add_parsers(sub)
    bench.add_parser(sub)
    compact.add_parser(sub)
    return p


def _with_config(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a ``--config FILE.toml`` supplies defaults that flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if path is None:
        return args

    sub = _subparser(parser, args.command)
    defaults = load_toml(path, sub)
    for action in sub._actions:  # a repeatable flag on the command line replaces the file's list
        if isinstance(action, argparse._AppendAction) and given_on_command_line(argv, action):
            defaults.pop(action.dest, None)
    sub.set_defaults(**defaults)
    return parser.parse_args(argv)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(name)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _with_config(list(sys.argv[1:] if argv is None else argv))
        setup(
            getattr(args, "log_level", "warning"),
            getattr(args, "log_format", "text"),
            getattr(args, "log_file", None),
        )
        return COMMANDS[args.command](args)
    except HarvestError as e:
        return _fail(str(e), e.exit_code)
    except OSError as e:  # the machine, not the harvest: a disk, a permission, a port
        where = f" ({clean(e.filename, 200)})" if e.filename else ""
        return _fail(f"{e.strerror or type(e).__name__}{where}", EXIT_FATAL)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 1


def _fail(message: str, code: int) -> int:
    """One line on stderr, and the same in the log file's journal."""
    message = clean(message, 1000)
    sys.stderr.write(f"{PROG}: error: {message}\n")
    JOURNAL.error("run end: error (exit %d): %s", code, message)
    return code
