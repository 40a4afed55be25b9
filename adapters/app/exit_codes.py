"""The command line's exit codes: the codes, their help text, and the one
map from tierbatch's errors to them (``exit_code_of``) with the precedence
when several outcomes apply (``first_exit_code``)."""

from __future__ import annotations

from collections.abc import Iterable

from tierbatch.adapters.app.model_check import NoModelLeftError
from tierbatch.adapters.app.quota_link import QuotaUnavailableError
from tierbatch.adapters.gemini.api_key import MissingApiKeyError
from tierbatch.adapters.gemini.origin import InvalidBaseUrlError
from tierbatch.policies.errors import (
    ConfigError,
    FatalProviderError,
    RuntimeFailureError,
    StorageError,
    TierbatchError,
)
from tierbatch.policies.task import MixedTaskVersionsError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_PROVIDER_REFUSED = 4
EXIT_INTERRUPTED = 5
EXIT_STORAGE = 6
EXIT_RUNTIME_FAILED = 7
EXIT_MODEL_MISSING = 8
EXIT_BUDGET = 9

EXIT_CODES_HELP = """\
exit codes:
  0  every article is terminal and none failed
  1  some articles failed (the summary says why; their result rows say so too)
  2  bad usage, configuration or database (the message names the problem)
  3  some input lines were rejected (line numbers and reasons are in the
     database's rejects table; every valid line was processed)
  4  the provider refused the configuration (HTTP 401/403, or the base URL
     redirected, which is never followed): check the API key, provider.base_url
     and that the key's project may use the configured models; queued articles
     stay queued in the database
  5  run only: stopped by a signal before every article was terminal (the rest
     stay queued; run again to finish them)
  6  the database failed during the run (e.g. disk full): the message names
     the database and the problem; articles whose results could not be
     written were handed back to the queue (or their leases expire)
  7  the runtime itself failed: extractors kept crashing, or one of its actors
     died (a bug; the log has the error). Not a key or provider problem;
     unfinished articles stay queued in the database
  8  a configured model does not exist at the provider (HTTP 404). run and
     daemon: the check at start found a tier with none of its models left, and
     stopped before leasing anything (the articles stay queued); a missing
     model that leaves every tier a model only warns and is routed around.
     --no-check skips the check. models: some configured model is missing
  9  run only: the daily budget ([budget]) is spent; the articles it holds
     stay queued until the quota day's midnight (run again then)
  When several apply, the first of 6, then 7 or 4 (only one can stop a run),
  then 5, 9, 3, 1 wins. daemon exits 0 on SIGTERM/SIGINT, 4 when the provider
  refuses the configuration, 6 when the database fails, 7 when the runtime
  fails and 8 when the check at start finds a tier without models. models
  exits 0 when every configured model exists, 4 when the key is refused, 8
  when one is missing, 1 when some could not be checked (timeout, 5xx).
"""


class UsageError(TierbatchError):
    """A problem with the command line or its inputs: exit code 2."""


# The error that ends a command -> its exit code, most specific first. An
# error not listed here is a bug: it ends the command with its traceback.
_EXIT_CODE_OF_ERROR: tuple[tuple[type[TierbatchError], int], ...] = (
    (UsageError, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (MissingApiKeyError, EXIT_USAGE),
    (InvalidBaseUrlError, EXIT_USAGE),
    (MixedTaskVersionsError, EXIT_USAGE),
    (QuotaUnavailableError, EXIT_USAGE),  # the quota address, or an owner never reached
    (FatalProviderError, EXIT_PROVIDER_REFUSED),
    (NoModelLeftError, EXIT_MODEL_MISSING),
    (RuntimeFailureError, EXIT_RUNTIME_FAILED),
    (StorageError, EXIT_STORAGE),
)
# When several outcomes apply, the first of these wins (only one of 7, 4 and
# 8 can end a run: the first that happens).
_EXIT_PRECEDENCE = (
    EXIT_STORAGE,
    EXIT_RUNTIME_FAILED,
    EXIT_PROVIDER_REFUSED,
    EXIT_MODEL_MISSING,
    EXIT_INTERRUPTED,
    EXIT_BUDGET,
    EXIT_REJECTED,
    EXIT_FAILED,
)


def exit_code_of(error: BaseException) -> int | None:
    """The exit code of a command that ``error`` ended; None for an error
    that is not one of tierbatch's expected ones (a bug)."""
    for kind, code in _EXIT_CODE_OF_ERROR:
        if isinstance(error, kind):
            return code
    return None


def first_exit_code(codes: Iterable[int]) -> int:
    """The exit code that wins when several outcomes apply (0: none did)."""
    found = set(codes)
    return next((code for code in _EXIT_PRECEDENCE if code in found), EXIT_OK)
