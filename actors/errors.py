"""Exceptions the runtime raises to its embedder."""

from __future__ import annotations


class TierbatchError(Exception):
    """Base class of tierbatch's runtime errors."""


class QueueFull(TierbatchError):
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


class RuntimeNotRunning(TierbatchError):
    """The runtime was not started, or has stopped."""


class FatalProviderError(TierbatchError):
    """The provider refused the configuration (HTTP 401/403, ...): the run
    stopped taking work. Queued articles are kept and handed back by
    ``Runtime.stop``."""


class RuntimeFailure(TierbatchError):
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


class ActorDied(RuntimeFailure):
    """An actor of the runtime (registry, composer or supervisor) died."""

    def __init__(self, actor: str, cause: BaseException | None = None) -> None:
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "found dead"
        super().__init__(actor, f"the {actor} died ({what})", cause)


class ExtractorsKeepCrashing(RuntimeFailure):
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


class ShuttingDown(RuntimeNotRunning):
    """``begin_shutdown`` was called: the runtime takes no more work."""
