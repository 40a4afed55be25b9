"""The public API: what the three packages export, and the README's
embedding example, run as written so it cannot rot."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

import tierbatch.actors
import tierbatch.adapters
import tierbatch.policies
from tierbatch.adapters import default_config, render_config
from tierbatch.policies import Done, ProviderKind

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("tierbatch.policies", "tierbatch.actors", "tierbatch.adapters")


def embedding_example() -> str:
    """The first Python block under the README's embedding heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Embedding the runtime in a daemon", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the README's embedding section has no python block"
    return found.group(1)


@pytest.mark.parametrize("package", PUBLIC)
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, (package, name)


def test_the_adapters_package_exports_what_it_lazily_loads() -> None:
    homes = tierbatch.adapters._HOMES
    assert sorted(homes) == tierbatch.adapters.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = tierbatch.adapters.nothing_here


def test_the_embedding_api_is_exported() -> None:
    for name in ("Article", "Config", "Done", "Failed", "TierbatchError", "ConfigError"):
        assert name in tierbatch.policies.__all__, name
    for name in ("Runtime", "Provider", "Sink", "RuntimeStats", "QueueFullError"):
        assert name in tierbatch.actors.__all__, name
    for name in ("open_runtime", "load_config", "JsonlSink", "SimulatedProvider"):
        assert name in tierbatch.adapters.__all__, name


def test_the_readme_example_imports_only_the_public_packages() -> None:
    tree = ast.parse(embedding_example())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and all(m in PUBLIC for m in imported), imported


def test_the_readme_embedding_example_runs_on_the_simulated_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = default_config()
    simulated = dataclasses.replace(
        config, provider=dataclasses.replace(config.provider, kind=ProviderKind.SIMULATED)
    )
    (tmp_path / "tierbatch.toml").write_text(render_config(simulated), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(embedding_example(), "README.md", "exec"), scope)
    runtime = scope["runtime"]
    results = runtime.sink.results  # type: ignore[attr-defined]
    assert [r.article_id for r in results] == ["a1"]
    assert isinstance(results[0], Done)
    out = capsys.readouterr().out
    assert "simulated (provider.kind = simulated)" in out.splitlines()
    assert "Done(article_id='a1'" in out
