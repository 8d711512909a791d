"""``--config FILE.toml``: the flags of a nightly job in a file, checked like flags are.

Keys are the long flag names (``start-date`` or ``start_date``). Flags on the command line
override the file; the token never lives in it (use ``auth-token-file`` or the environment).
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from harvester.errors import UsageError


def load_toml(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Defaults for ``parser`` from a TOML file; unknown or misplaced keys are usage errors."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path} is not valid TOML: {e}") from None
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        dest = key.replace("-", "_")
        if dest in ("auth_token", "config"):
            raise UsageError(
                f"--config {path}: '{key}' does not belong in a config file; "
                "use auth-token-file or the VOBIZ_AUTH_TOKEN environment variable"
                if dest == "auth_token"
                else f"--config {path}: a config file cannot name another config"
            )
        action = actions.get(dest)
        if action is None:
            raise UsageError(
                f"--config {path}: unknown key '{key}' (keys are the flag names of this command)"
            )
        out[dest] = _convert(path, key, value, action)
    return out


def _convert(path: Path, key: str, value: Any, action: argparse.Action) -> Any:
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise UsageError(f"--config {path}: '{key}' must be true or false, not {value!r}")
        return value
    if action.type is not None and not isinstance(value, bool):
        try:
            value = action.type(value if not isinstance(value, Path) else str(value))  # type: ignore[operator]
        except (TypeError, ValueError):
            raise UsageError(f"--config {path}: '{key}' = {value!r} is not valid") from None
    elif isinstance(value, (dict, list)):
        raise UsageError(f"--config {path}: '{key}' must be a single value")
    else:
        value = str(value) if not isinstance(value, str) else value
    if action.choices is not None and value not in action.choices:
        raise UsageError(
            f"--config {path}: '{key}' = {value!r}: use one of {', '.join(map(str, action.choices))}"
        )
    return value


def given_on_command_line(argv: list[str], action: argparse.Action) -> bool:
    return any(a == opt or a.startswith(opt + "=") for a in argv for opt in action.option_strings)
