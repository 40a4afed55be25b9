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
