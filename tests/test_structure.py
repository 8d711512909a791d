"""The package's shape as a specification: stages import one way, nothing imports upward,
no module or class outgrows what a newcomer can read, and none of the tricks that trade
clarity for milliseconds come back."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

PACKAGE = ROOT / "harvester"
# Lower ranks never import higher ones; equal ranks are siblings that do not import each other
# (except within one package).
RANK = {
    "errors": 0,
    "version": 0,
    "logs": 1,
    "sim": 1,
    "records": 1,
    "api": 2,
    "lake": 2,
    "config": 3,
    "harvest": 4,
    "cli": 5,
    "__init__": 6,
    "__main__": 6,
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harvester"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("harvester")]
    return found


def test_every_stage_has_a_rank() -> None:
    assert {_stage(m) for m in _modules()} <= set(RANK)


def test_imports_run_one_way() -> None:
    wrong = []
    for module, tree in _modules().items():
        here = _stage(module)
        for target in _imports(tree):
            there = _stage(target) if target != "harvester" else "__init__"
            if there == here:
                continue
            if RANK[there] >= RANK[here]:
                wrong.append(f"{module} imports {target} ({here} {RANK[here]} -> {there} {RANK[there]})")
    assert wrong == []


# Imported where they are used, because a user may not have them installed: the extras
# (boto3 for s3, matplotlib for plots) and uvloop (not on Windows).
OPTIONAL = {"boto3", "matplotlib", "matplotlib.pyplot", "uvloop"}


def test_no_import_is_hidden_inside_a_function() -> None:
    """Imports at the top of a module: what a module needs is read in one place."""
    hidden = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else []
                    if isinstance(inner, ast.ImportFrom) or (names and not set(names) <= OPTIONAL):
                        hidden.append(f"{module}.{node.name}")
    assert hidden == []


def test_no_module_or_class_outgrows_a_reader() -> None:
    big = []
    for module, tree in _modules().items():
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
        if len(path.read_text().splitlines()) > 420:
            big.append(module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                if len(methods) > 14:  # a dozen operations, with an __init__ and a private helper
                    big.append(f"{module}.{node.name}: {len(methods)} methods")
    assert big == []


def test_no_tricks_that_trade_clarity_for_milliseconds() -> None:
    """No patching of ssl, no import hooks, no foreign-function calls, no switching the collector off or
    freezing it, no fork outside the process pool, no re-classing objects, no environment
    writes in library code (patterns, so that this list is not itself one of them)."""
    banned = [
        r"ssl\.SSLContext\.\w+\s*=|setattr\(ssl\.",
        r"sys\.meta_path",
        r"\bctypes\b",
        r"gc\.(disable|freeze)\(",
        r"os\.fork\(",
        r"\.__class__\s*=(?!=)",
        r"os\.environ\[[^]]+\]\s*=(?!=)|os\.environ\.(setdefault|update)\(",
    ]
    found = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        found += [f"{path.name}: {b}" for b in banned if re.search(b, text)]
    assert found == []
