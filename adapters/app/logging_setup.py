"""structlog configuration for the ``tierbatch`` command line.

Library code only ever calls ``structlog.get_logger``; how log lines look is
the application's decision, so this module is called by the CLI and nothing
else (never on import). A person at a terminal gets readable console lines; a
daemon under a supervisor, or anyone passing ``--log-json``, gets one JSON
object per line for a log pipeline.

Lines go to whatever ``sys.stderr`` is at the moment of writing, not the
stream that was current at configuration time, so a live progress display
that redirects stderr (rich does) shows log lines above itself instead of
being torn by them.

Secrets: the API key is never passed to a logger by tierbatch; as a second
line of defence the values given to ``configure_logging(secrets=...)`` are
scrubbed twice: from every string in an event before it is rendered, and
from the final rendered text of every line -- the renderer adds text of its
own (exception tracebacks), which the first pass never sees. Tracebacks
never show local variables (rich's do by default, and a local may hold the
key, a request's headers or a config): they are Python's plain ones, which
are also never wrapped, so a secret cannot be split across lines where no
scrubber would find it. Lines of the standard library's loggers (pykka,
asyncio, the HTTP clients) go through the same final scrub, at warning and
above.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tierbatch.policies.errors import TierbatchError

REDACTED = "[redacted]"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_NAMES = tuple(_LEVELS)


class UnknownLogLevelError(TierbatchError, ValueError):
    """A log level name that is not one of ``LEVEL_NAMES``."""


class CurrentStderrLogger:
    """Writes each line to the current ``sys.stderr`` (see the module docstring)."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _current_stderr_logger(*_args: Any) -> CurrentStderrLogger:
    return CurrentStderrLogger()


@dataclass(frozen=True, slots=True)
class SecretScrubber:
    """A structlog processor replacing every occurrence of a secret in the
    event's string values (nested ones too) with ``[redacted]``."""

    secrets: tuple[str, ...]

    def __call__(self, _logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        if not self.secrets:
            return event
        for key, value in list(event.items()):
            event[key] = self._scrub(value)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, MutableMapping):
            return {k: self._scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value


@dataclass(frozen=True, slots=True)
class RenderedScrubber:
    """The last structlog processor: scrubs the rendered line itself."""

    secrets: tuple[str, ...]

    def __call__(self, _logger: WrappedLogger, _name: str, line: Any) -> Any:
        return scrub_text(line, self.secrets)


def scrub_text(text: Any, secrets: tuple[str, ...]) -> Any:
    """``text`` (str or bytes) with every secret replaced by ``[redacted]``."""
    for secret in secrets:
        if isinstance(text, str):
            text = text.replace(secret, REDACTED)
        elif isinstance(text, bytes):
            text = text.replace(secret.encode(), REDACTED.encode())
    return text


class _ScrubbingStderrHandler(logging.Handler):
    """For the standard library's loggers: the current stderr, secrets
    scrubbed from the formatted line (exception text included)."""

    def __init__(self, secrets: tuple[str, ...], level: int) -> None:
        super().__init__(level)
        self.secrets = secrets
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = scrub_text(self.format(record), self.secrets)
            CurrentStderrLogger().msg(line)
        except Exception:
            self.handleError(record)


def configure_logging(
    *,
    json_lines: bool,
    level: str = "info",
    colors: bool | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Configure structlog globally for this process.

    ``json_lines`` picks JSON output over console output; ``colors`` (console
    only) defaults to whether stderr is a terminal; ``secrets`` are scrubbed
    from every line. The standard library's root logger gets one handler
    of ours (replacing any earlier one of ours), at ``level`` or warning,
    whichever is higher. Raises ``UnknownLogLevelError`` for a bad ``level``.
    """
    try:
        threshold = _LEVELS[level.lower()]
    except KeyError:
        raise UnknownLogLevelError(
            f"unknown log level {level!r}; expected one of: {', '.join(LEVEL_NAMES)}"
        ) from None
    values = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
    scrubber = SecretScrubber(values)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    renderer: list[Processor]
    if json_lines:
        renderer = [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrubber,
            structlog.processors.JSONRenderer(default=str),
            RenderedScrubber(values),
        ]
    else:
        use_colors = sys.stderr.isatty() if colors is None else colors
        renderer = [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            scrubber,
            structlog.dev.ConsoleRenderer(
                colors=use_colors, exception_formatter=structlog.dev.plain_traceback
            ),
            RenderedScrubber(values),
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _install_stdlib_handler(values, max(threshold, logging.WARNING))


def _install_stdlib_handler(secrets: tuple[str, ...], level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ScrubbingStderrHandler):
            root.removeHandler(handler)
    root.addHandler(_ScrubbingStderrHandler(secrets, level))


_STDLIB_HANDLERS = "tierbatch_stdlib_handlers"


def saved_configuration() -> dict[str, Any]:
    """structlog's current configuration and the root logger's handlers, to
    put back with ``restore_configuration`` when the CLI runs inside another
    program (tests, notebooks)."""
    saved = dict(structlog.get_config())
    saved[_STDLIB_HANDLERS] = list(logging.getLogger().handlers)
    return saved


def restore_configuration(saved: dict[str, Any]) -> None:
    config = dict(saved)
    handlers = config.pop(_STDLIB_HANDLERS, None)
    structlog.configure(**config)
    if handlers is not None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
