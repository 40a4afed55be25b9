"""The command line maps tierbatch's errors and outcomes to exit codes in one
place (``exit_code_of``, ``first_exit_code``): the codes and their
precedence are the README's."""

from __future__ import annotations

import itertools

import pytest

from tierbatch.adapters.app.exit_codes import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_MODEL_MISSING,
    EXIT_OK,
    EXIT_PROVIDER_REFUSED,
    EXIT_REJECTED,
    EXIT_RUNTIME_FAILED,
    EXIT_STORAGE,
    EXIT_USAGE,
    UsageError,
    exit_code_of,
    first_exit_code,
)
from tierbatch.adapters.app.model_check import NoModelLeftError
from tierbatch.adapters.app.status_report import StatusError
from tierbatch.adapters.gemini.api_key import MissingApiKeyError
from tierbatch.adapters.gemini.origin import InvalidBaseUrlError
from tierbatch.adapters.storage.store import IncompatibleSchemaError
from tierbatch.policies.errors import (
    ActorDiedError,
    ConfigError,
    ExtractorsKeepCrashingError,
    FatalProviderError,
    QueueFullError,
    StorageError,
)


@pytest.mark.parametrize(
    "error,code",
    [
        (UsageError("--db: no such directory"), EXIT_USAGE),
        (ConfigError("tiers[1].model", "unknown model"), EXIT_USAGE),
        (MissingApiKeyError(["GEMINI_API_KEY"]), EXIT_USAGE),
        (InvalidBaseUrlError("not a URL"), EXIT_USAGE),
        (FatalProviderError("HTTP 403"), EXIT_PROVIDER_REFUSED),
        (NoModelLeftError("tier hot has no model"), EXIT_MODEL_MISSING),
        (ActorDiedError("registry"), EXIT_RUNTIME_FAILED),
        (ExtractorsKeepCrashingError(21, 60.0, "boom"), EXIT_RUNTIME_FAILED),
        (StorageError("disk full"), EXIT_STORAGE),
        (IncompatibleSchemaError("version 9"), EXIT_STORAGE),
        (StatusError("not a database"), EXIT_STORAGE),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_each_error_family_has_its_exit_code(error: Exception, code: int) -> None:
    assert exit_code_of(error) == code


def test_an_error_the_command_line_does_not_expect_has_no_code() -> None:
    assert exit_code_of(QueueFullError(1, 2, 3)) is None
    assert exit_code_of(ValueError("a bug")) is None


def test_precedence_is_the_readmes() -> None:
    """6, then 7 or 4 (8 at start), then 5, then 3, then 1."""
    order = [
        EXIT_STORAGE,
        EXIT_RUNTIME_FAILED,
        EXIT_PROVIDER_REFUSED,
        EXIT_MODEL_MISSING,
        EXIT_INTERRUPTED,
        EXIT_REJECTED,
        EXIT_FAILED,
    ]
    assert first_exit_code([]) == EXIT_OK
    for size in range(1, 4):
        for codes in itertools.permutations(order, size):
            assert first_exit_code(codes) == min(codes, key=order.index)
