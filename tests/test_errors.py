"""One exception hierarchy: every public error of the three packages descends
from ``TierbatchError``, there is one ``SnapshotError``, and the mixins
callers catch (``ValueError``, ``KeyError``) are still there."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import tierbatch.actors
import tierbatch.adapters
import tierbatch.policies
from tierbatch.actors import errors as old_names
from tierbatch.policies.errors import (
    ActorDiedError,
    ConfigError,
    ExtractorsKeepCrashingError,
    FatalProviderError,
    ProviderError,
    QueueFullError,
    RuntimeFailureError,
    RuntimeNotRunningError,
    RuntimeStateError,
    ShuttingDownError,
    SnapshotError,
    StorageError,
    TierbatchError,
    UnknownModelError,
)

# The top-level packages of the optional extras (postgres, legacy).
_OPTIONAL = {"psycopg", "google"}


def _modules() -> list[str]:
    names = []
    for package in (tierbatch.policies, tierbatch.actors, tierbatch.adapters):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return names


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional extra that is not installed
            if (exc.name or "").split(".")[0] in _OPTIONAL:
                continue
            raise
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and obj.__module__ == name
                and not obj.__name__.startswith("_")
            ):
                found.append(obj)
    return found


def test_the_walk_finds_the_errors_of_every_layer() -> None:
    names = {cls.__name__ for cls in _exception_classes()}
    assert {"ConfigError", "InvalidArticleError", "MissingApiKeyError", "UsageError"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: cls.__qualname__)
def test_every_public_error_descends_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, TierbatchError), cls
    assert cls.__name__.endswith("Error"), cls


def test_the_families() -> None:
    assert issubclass(FatalProviderError, ProviderError)
    for cls in (QueueFullError, RuntimeNotRunningError, ShuttingDownError):
        assert issubclass(cls, RuntimeStateError)
    for cls in (ActorDiedError, ExtractorsKeepCrashingError):
        assert issubclass(cls, RuntimeFailureError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(UnknownModelError, KeyError)
    assert issubclass(SnapshotError, ValueError)


def test_one_snapshot_error_and_one_storage_error() -> None:
    from tierbatch.adapters.storage import snapshot_file, store
    from tierbatch.policies import quota

    assert snapshot_file.SnapshotError is quota.SnapshotError is SnapshotError
    assert store.StorageError is StorageError


def test_the_old_runtime_error_names_are_aliases() -> None:
    assert old_names.QueueFull is QueueFullError
    assert old_names.RuntimeNotRunning is RuntimeNotRunningError
    assert old_names.ShuttingDown is ShuttingDownError
    assert old_names.RuntimeFailure is RuntimeFailureError
    assert old_names.ActorDied is ActorDiedError
    assert old_names.ExtractorsKeepCrashing is ExtractorsKeepCrashingError
