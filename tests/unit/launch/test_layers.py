"""The imports go one way: launch/ above api/ and worker/, both above shared/, and no side knows the other.

Read from the source (every import statement, and every string that names a module), so a lazy import
inside a function or a "module:attribute" string counts as much as a top-level import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = ("api", "worker", "shared", "launch")
# Which of our packages each one may import; launch/ may reach the sides only inside functions.
ALLOWED = {"shared": set(), "api": {"shared"}, "worker": {"shared"}, "launch": {"shared", "api", "worker"}}
# A string naming one of our modules: "worker.tasks", "api.cli:api".
MODULE_STRING = re.compile(r"^(api|worker|shared|launch)([.:][A-Za-z_]+)+$")


def _named(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """(top package, line, at module level) for every import and module-path string in a module."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno, id(node) in top_level))
        elif isinstance(node, ast.Constant) and (match := MODULE_STRING.match(str(node.value))):
            found.append((match.group(1), node.lineno, False))  # resolved when used, never at import
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for named, line, at_top in _named(ast.parse(path.read_text(), str(path))):
            if named not in PACKAGES or named == package:
                continue
            where = f"{path.relative_to(REPO)}:{line} names {named}"
            if named not in ALLOWED[package]:
                bad.append(where)
            elif package == "launch" and named in {"api", "worker"} and at_top:
                bad.append(f"{where} at import time (each image holds one side only)")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    assert _violations(package) == []


def test_the_check_sees_lazy_imports_and_module_strings() -> None:
    source = 'import os\n\ndef f():\n    from worker.models import x\n\nTARGET = "api.cli:api"\n'
    named = _named(ast.parse(source))
    assert ("worker", 4, False) in named and ("api", 6, False) in named and ("os", 1, True) in named
