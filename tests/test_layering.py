"""The layering rule, checked on the source.

Imports point inward only (adapters -> actors -> policies) and policies/
stays pure. Inside adapters/, the outside-facing rooms (gemini, storage,
simulation, ray) never reach into the application (app), only the ray room
imports Ray, and no production code imports a test helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The standard library's pure modules policies/ may use: no clock, threads,
# processes, sockets or files.
PURE_STDLIB = {
    "__future__", "bisect", "collections", "dataclasses", "datetime", "difflib",
    "enum", "functools", "hashlib", "heapq", "itertools", "math", "re", "types",
    "typing", "unicodedata", "urllib", "zoneinfo",
}  # fmt: skip

PRODUCTION = ("policies", "actors", "adapters", "bench")


def imported_modules(folder: str) -> dict[str, set[str]]:
    """Every module imported by each file under ``folder`` (walking subfolders),
    keyed by the file's path relative to the repository root."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "results" in path.relative_to(ROOT).parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_walk_sees_subfolders():
    assert "adapters/app/cli.py" in imported_modules("adapters")


def test_policies_import_only_pure_stdlib_and_policies():
    for name, modules in imported_modules("policies").items():
        for module in modules:
            if module.startswith("tierbatch."):
                assert module.startswith("tierbatch.policies"), (name, module)
            else:
                assert module.split(".")[0] in PURE_STDLIB, (name, module)


@pytest.mark.parametrize(
    "folder,forbidden",
    [
        ("actors", "tierbatch.adapters"),
        ("adapters/gemini", "tierbatch.adapters.app"),
        ("adapters/storage", "tierbatch.adapters.app"),
        ("adapters/simulation", "tierbatch.adapters.app"),
        ("adapters/simulation", "tierbatch.adapters.storage"),
        ("adapters/gemini", "tierbatch.adapters.storage"),
        ("adapters/gemini", "tierbatch.adapters.simulation"),
        ("adapters/storage", "tierbatch.adapters.gemini"),
        ("adapters/storage", "tierbatch.adapters.simulation"),
        ("adapters/ray", "tierbatch.adapters.app"),
    ],
)
def test_inner_rooms_do_not_import_outer_ones(folder, forbidden):
    for name, modules in imported_modules(folder).items():
        assert not any(m == forbidden or m.startswith(forbidden + ".") for m in modules), name


@pytest.mark.parametrize("folder", PRODUCTION)
def test_production_code_never_imports_test_helpers(folder):
    for name, modules in imported_modules(folder).items():
        bad = [m for m in modules if m == "tests" or m.startswith("tests.")]
        bad += [m for m in modules if m.split(".")[0] in {"pytest", "hypothesis"}]
        assert not bad, (name, bad)


@pytest.mark.parametrize("folder", ["policies", "actors", "adapters"])
def test_no_module_imports_the_public_facades(folder):
    """``tierbatch.policies``/``actors``/``adapters`` re-export the public
    names for embedders; a module of the library importing them instead of
    the defining module would load the whole package (``adapters`` would
    pull the application into its inner rooms) and risk import cycles."""
    facades = {"tierbatch.policies", "tierbatch.actors", "tierbatch.adapters"}
    for name, modules in imported_modules(folder).items():
        assert not modules & facades, (name, modules & facades)


def test_only_the_ray_room_imports_ray():
    """Ray is an extra: everything but ``adapters/ray`` (and the bench that
    measures it) must import and run without it."""
    for folder in ("policies", "actors", "adapters"):
        for name, modules in imported_modules(folder).items():
            if name.startswith("adapters/ray/"):
                continue
            assert not any(m == "ray" or m.startswith("ray.") for m in modules), name


MAX_MODULE_LINES = 450
LONG_MODULE_REASON = "Longer than the house's ~450 lines on purpose:"


@pytest.mark.parametrize("folder", ["policies", "actors", "adapters"])
def test_a_long_module_says_at_its_top_why_it_is_long(folder):
    """A newcomer reads small modules with one job; a module that grows past
    ~450 lines must say why in its docstring, or be split."""
    unexplained = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= MAX_MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if LONG_MODULE_REASON not in " ".join(docstring.split()):
            unexplained.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not unexplained, unexplained
