"""Ports: the small protocols adapters implement for the runtime.

They are the only way the actors reach the outside world, so the runtime runs
unchanged on the simulated provider, the Gemini SDKs or a test double.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tierbatch.policies.articles import Article
from tierbatch.policies.errors import ProviderError
from tierbatch.policies.outcomes import (
    AuthFailed,
    BadRequest,
    CallOutcome,
    ModelNotFound,
    RateLimited,
    ServerError,
    TimedOut,
)
from tierbatch.policies.results import ArticleAnswer, TerminalResult


@dataclass(frozen=True, slots=True)
class ExtractionRequest:
    """One model call on a pack of articles of one tier.

    ``timeout_s`` is how long, in real seconds, the adapter may wait for the
    answer, counted from when the request has a connection: time spent
    queueing for one (an HTTP pool slot, a worker thread) is not the
    server's and has a budget of its own, ``timeout_s`` again. A call that
    never got a connection was not sent: ``Cancelled``. The runtime enforces
    a backstop: ``timeout_s`` after the latest ``mark_request_sent``, or
    twice that from the start of ``extract`` while there is none.
    ``granted_at`` is the registry's steady clock reading when quota was
    granted (``Clock.now``, not a wall time); adapters may log it.
    """

    model: str
    articles: tuple[Article, ...]
    timeout_s: float
    est_input_tokens: int
    grant_id: int = 0
    granted_at: float = 0.0
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class PackAnswer:
    """The outcome of the call and, when it succeeded, one answer per article.

    An article id absent from ``answers`` after a ``Succeeded`` outcome is
    treated as missing from the model's answer.
    """

    outcome: CallOutcome
    answers: Mapping[str, ArticleAnswer] = field(default_factory=dict)


# Set by the runtime around each ``Provider.extract`` call.
_request_sent: ContextVar[Callable[[], None] | None] = ContextVar(
    "tierbatch_request_sent", default=None
)


def mark_request_sent() -> None:
    """Tell the runtime that the current request is leaving now.

    Providers count a request when it arrives, so the registry's rate window
    should count it from the moment it leaves, not from when quota was
    granted: an SDK's own CPU work, connection set-up or a queue in front of
    the HTTP client all sit in between. An adapter calls this as late as it
    can -- e.g. from its HTTP client's request hook. It is optional (the
    runtime otherwise counts from the start of ``extract``), cheap, safe to
    call more than once and from any thread that inherited the context: the
    registry hears the first mark (each one restarts the runtime's backstop
    timeout).
    """
    callback = _request_sent.get()
    if callback is not None:
        callback()


def bind_request_sent(callback: Callable[[], None] | None) -> None:
    """Used by the runtime: what ``mark_request_sent`` calls in this context."""
    _request_sent.set(callback)


@runtime_checkable
class Provider(Protocol):
    """Calls a model. ``extract`` must map every provider error onto a
    ``CallOutcome`` rather than raise; an exception that escapes -- a
    ``CancelledError`` the runtime did not cause included -- is treated as
    a server error, never as a crash of the runtime."""

    async def extract(self, request: ExtractionRequest) -> PackAnswer: ...

    async def aclose(self) -> None: ...


BATCH_METHOD = "batchGenerateContent"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the provider says about a model it has (Gemini's ``models.get``).

    ``name`` is the model's name without the ``models/`` prefix;
    ``input_token_limit`` and ``output_token_limit`` are None when the
    provider does not say; ``methods`` are its supported generation methods
    (``generateContent``, ``batchGenerateContent``, ...).
    """

    name: str
    display_name: str = ""
    input_token_limit: int | None = None
    output_token_limit: int | None = None
    methods: tuple[str, ...] = ()

    @property
    def supports_batch(self) -> bool:
        return BATCH_METHOD in self.methods


class ModelLookupError(ProviderError):
    """The provider could not say whether a model exists: ``outcome`` says
    why, in the runtime's terms (``AuthFailed`` for a refused key, a
    ``ServerError`` or ``TimedOut`` for trouble on the way)."""

    def __init__(self, model: str, outcome: CallOutcome) -> None:
        super().__init__(f"{model}: {describe_outcome(outcome)}")
        self.model = model
        self.outcome = outcome


def describe_outcome(outcome: CallOutcome) -> str:
    """A call's outcome in a few words, for messages."""
    match outcome:
        case AuthFailed(status, message):
            return f"refused (HTTP {status}): {message}" if status else f"refused: {message}"
        case ServerError(status, message):
            where = f"HTTP {status}" if status else "no answer"
            return f"{where}: {message}" if message else where
        case TimedOut(after_s):
            return f"no answer within {after_s:.1f} s"
        case RateLimited(_, _, message) | BadRequest(message) | ModelNotFound(message):
            return message or type(outcome).__name__
    return type(outcome).__name__


@runtime_checkable
class ModelCatalog(Protocol):
    """The optional port a provider implements when it can tell which models
    exist, so a run can find a retired model before spending attempts on
    404s. Kept apart from ``Provider`` so a provider need not have it."""

    async def describe_model(self, name: str, *, timeout_s: float) -> ModelInfo | None:
        """The model's description; None when the provider has no such
        model (HTTP 404). Raises ``ModelLookupError`` for anything else
        that keeps it from answering."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Receives terminal results, exactly one per article, from one thread.

    ``write`` may buffer; ``flush`` makes everything written so far durable;
    ``close`` flushes and releases resources. ``write`` takes the results
    over: a sink that can fail keeps and retries them itself (the runtime
    hands each result over once and does not resend it when ``write``
    raises, since a sink may have kept some of them already).
    """

    def write(self, results: Sequence[TerminalResult]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
