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
line of defence every string in an event is scrubbed of the values given to
``configure_logging(secrets=...)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_NAMES = tuple(_LEVELS)


class UnknownLogLevel(ValueError):
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
    from every line. Raises ``UnknownLogLevel`` for a bad ``level``.
    """
    try:
        threshold = _LEVELS[level.lower()]
    except KeyError:
        raise UnknownLogLevel(
            f"unknown log level {level!r}; expected one of: {', '.join(LEVEL_NAMES)}"
        ) from None
    scrubber = SecretScrubber(tuple(s for s in secrets if s))
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
        ]
    else:
        use_colors = sys.stderr.isatty() if colors is None else colors
        renderer = [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            scrubber,
            structlog.dev.ConsoleRenderer(colors=use_colors),
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )


def saved_configuration() -> dict[str, Any]:
    """structlog's current configuration, to put back with ``restore_configuration``
    when the CLI runs inside another program (tests, notebooks)."""
    return dict(structlog.get_config())


def restore_configuration(saved: dict[str, Any]) -> None:
    structlog.configure(**saved)
