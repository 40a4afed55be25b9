"""The layering rule, checked on the source: imports point inward only
(adapters -> actors -> policies), and policies/ stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The standard library's pure modules policies/ may use: no clock, threads,
# processes, sockets or files.
PURE_STDLIB = {
    "__future__", "bisect", "collections", "dataclasses", "datetime", "difflib",
    "enum", "functools", "heapq", "itertools", "math", "types", "typing",
    "urllib", "zoneinfo",
}  # fmt: skip


def imported_modules(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path.name] = names
    return found


def test_policies_import_only_pure_stdlib_and_policies():
    for name, modules in imported_modules("policies").items():
        for module in modules:
            if module.startswith("tierbatch."):
                assert module.startswith("tierbatch.policies"), (name, module)
            else:
                assert module.split(".")[0] in PURE_STDLIB, (name, module)


@pytest.mark.parametrize("folder,forbidden", [("actors", "tierbatch.adapters")])
def test_actors_do_not_import_adapters(folder, forbidden):
    for name, modules in imported_modules(folder).items():
        assert not any(m.startswith(forbidden) for m in modules), name
