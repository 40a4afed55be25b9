"""Every error tierbatch raises descends from ``TierbatchError``.

The root and the families live here, in the innermost layer, so every
layer can raise them and an embedder can catch them by family::

    TierbatchError
    +-- ConfigError (ValueError)        a config value missing, mistyped, inconsistent
    +-- UnknownModelError (KeyError)    a model the config does not define
    +-- StorageError                    the database cannot be read or written
    +-- SnapshotError (ValueError)      a quota snapshot cannot be read or saved
    +-- ProviderError                   the provider cannot be used: no key, the
    |   |                               key refused, a model lookup failed, ...
    |   +-- FatalProviderError          the provider refused the configuration
    +-- RuntimeStateError               the runtime cannot take the request now
    |   +-- QueueFullError
    |   +-- RuntimeNotRunningError
    |       +-- ShuttingDownError
    +-- RuntimeFailureError             the runtime itself failed (a bug)
        +-- ActorDiedError
        +-- ExtractorsKeepCrashingError

Leaf errors of one module live beside the code that raises them and derive
from one of these (``InvalidArticleError``, ``IncompatibleSchemaError``,
``MissingApiKeyError``, ``BatchError``, ...). The ``ValueError`` and
``KeyError`` mixins stay where callers catch those. The command line maps
the families to its exit codes in one table (``adapters/app/exit_codes.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ActorDiedError",
    "ConfigError",
    "ExtractorsKeepCrashingError",
    "FatalProviderError",
    "ProviderError",
    "QueueFullError",
    "RuntimeFailureError",
    "RuntimeNotRunningError",
    "RuntimeStateError",
    "ShuttingDownError",
    "SnapshotError",
    "StorageError",
    "TierbatchError",
    "UnknownModelError",
]


class TierbatchError(Exception):
    """The root of every error tierbatch raises."""


# ---- configuration ----------------------------------------------------------------


class ConfigError(TierbatchError, ValueError):
    """A configuration value is missing, of the wrong type or inconsistent.

    ``key`` is the dotted path of the offending entry (``tiers[1].model``);
    an empty key means the file as a whole (missing, unreadable, bad TOML).
    ``source`` names the file when the config came from one. ``more`` holds
    further ``(key, problem)`` pairs found in the same pass, so a user fixes
    every mistake in one round instead of one per run; ``str()`` lists them
    all, one per line.
    """

    def __init__(
        self,
        key: str,
        problem: str,
        source: str | None = None,
        more: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        self.more = tuple(more)
        super().__init__("\n".join(self._line(k, p) for k, p in self.problems))

    @property
    def problems(self) -> tuple[tuple[str, str], ...]:
        """Every ``(key, problem)`` pair, the first one being ``key``/``problem``."""
        return ((self.key, self.problem), *self.more)

    def in_source(self, source: str) -> ConfigError:
        """The same error, attributed to the file ``source``."""
        return ConfigError(self.key, self.problem, source, self.more)

    def _line(self, key: str, problem: str) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{key}: {problem}" if key else f"{where}{problem}"

    def __reduce__(
        self,
    ) -> tuple[type[ConfigError], tuple[str, str, str | None, tuple[tuple[str, str], ...]]]:
        return (ConfigError, (self.key, self.problem, self.source, self.more))


class UnknownModelError(TierbatchError, KeyError):
    """A model name that has no ``[models."NAME"]`` table in the config."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"no model {self.name!r} in the config; models: {', '.join(self.known)}"


# ---- storage ----------------------------------------------------------------------


class StorageError(TierbatchError):
    """The database could not be read or written (after retrying busy errors)."""


class SnapshotError(TierbatchError, ValueError):
    """A quota snapshot cannot be used or saved: its bytes are not a
    snapshot, its content is corrupt or of another format or version, or
    the state could not be encoded or written."""


# ---- the provider -----------------------------------------------------------------


class ProviderError(TierbatchError):
    """The provider cannot be used as configured: no API key, a base URL
    that is no URL, a model lookup that failed, a refused configuration."""


class FatalProviderError(ProviderError):
    """The provider refused the configuration (HTTP 401/403, a redirect,
    ...): the run stopped taking work. Queued articles are kept and handed
    back by ``Runtime.stop``."""


# ---- the runtime ------------------------------------------------------------------


class RuntimeStateError(TierbatchError):
    """The runtime cannot take this request in its present state."""


class QueueFullError(RuntimeStateError):
    """``submit`` could not place every article before its timeout.

    ``accepted`` articles (the first ones of the input, in order) were taken
    and will each reach exactly one terminal result; the rest were not.
    """

    def __init__(self, accepted: int, remaining: int, capacity: int) -> None:
        super().__init__(
            f"queue full: accepted {accepted} article(s), {remaining} not accepted "
            f"(capacity {capacity}; raise composer.max_queued or submit with block=True)"
        )
        self.accepted = accepted
        self.remaining = remaining
        self.capacity = capacity


class RuntimeNotRunningError(RuntimeStateError):
    """The runtime was not started, or has stopped."""


class ShuttingDownError(RuntimeNotRunningError):
    """``begin_shutdown`` was called: the runtime takes no more work."""


class RuntimeFailureError(TierbatchError):
    """The runtime itself failed and stopped taking work: one of its actors
    died of an unhandled exception (a bug), or the extractors kept crashing.
    Not a provider problem: the API key and configuration are not at fault.

    ``actor`` names what failed ("registry", "composer", "supervisor",
    "extractors"); ``cause`` is the exception, when there was one. Every
    pending ``submit``/``drain`` is answered with this error, and ``stop``
    still tears everything down and hands back what it can.
    """

    def __init__(self, actor: str, detail: str, cause: BaseException | None = None) -> None:
        super().__init__(f"the runtime failed: {detail}")
        self.actor = actor
        self.detail = detail
        self.cause = cause


class ActorDiedError(RuntimeFailureError):
    """An actor of the runtime (registry, composer or supervisor) died."""

    def __init__(self, actor: str, cause: BaseException | None = None) -> None:
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "found dead"
        super().__init__(actor, f"the {actor} died ({what})", cause)


class ExtractorsKeepCrashingError(RuntimeFailureError):
    """The supervisor stopped restarting extractors: too many crashes in its
    window, so something is systematically wrong (the log has each crash)."""

    def __init__(self, crashes: int, window_s: float, last_error: str) -> None:
        super().__init__(
            "extractors",
            f"extractors keep crashing ({crashes} crashes within {window_s:g} s; "
            f"last error: {last_error})",
        )
        self.crashes = crashes
        self.window_s = window_s
        self.last_error = last_error
