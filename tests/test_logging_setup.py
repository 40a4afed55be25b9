"""The CLI's logging set-up: secrets never reach a rendered line, whatever
the renderer puts there (exception tracebacks included)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from tierbatch.adapters.app.logging_setup import (
    REDACTED,
    configure_logging,
    restore_configuration,
    saved_configuration,
)

KEY = "AIzaSy-distinctive-SECRET-4242424242"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = saved_configuration()
    try:
        yield
    finally:
        restore_configuration(saved)


def _call_with_the_key_in_a_local() -> None:
    api_key = KEY
    headers = {"x-goog-api-key": api_key}
    raise RuntimeError(f"request failed ({len(headers)} header)")


def _fail_with_the_key_in_the_message() -> None:
    # Long enough that a renderer wrapping at 80 columns would split the key.
    raise ValueError("x" * 70 + f" the server echoed {KEY} back")


@pytest.mark.parametrize(
    ("json_lines", "colors"),
    [(False, False), (False, True), (True, False)],
    ids=["console", "console-colors", "json"],
)
def test_console_traceback_never_shows_the_key(
    json_lines: bool, colors: bool, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json_lines=json_lines, level="debug", colors=colors, secrets=[KEY])
    log = structlog.get_logger("tierbatch.test")
    try:
        _call_with_the_key_in_a_local()
    except RuntimeError:
        log.exception("call failed", detail=f"key {KEY}")
    try:
        _fail_with_the_key_in_the_message()
    except ValueError:
        log.exception("echo failed")
    log.error("plain line", nested={"k": [f"{KEY}"]}, as_repr=repr(KEY))
    err = capsys.readouterr().err
    assert "request failed" in err and "the server echoed" in err and "plain line" in err
    assert "_call_with_the_key_in_a_local" in err, "the traceback is there"
    assert KEY not in err
    assert REDACTED in err
    if json_lines:
        for line in err.splitlines():
            json.loads(line)


def test_tracebacks_show_no_local_variables(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Locals hold request headers, configs, answers: never worth printing."""
    configure_logging(json_lines=False, level="debug", colors=False)
    marker = "local-value-" + "7" * 8
    try:
        local_holding_a_value = marker
        raise RuntimeError(f"length {len(local_holding_a_value)}")
    except RuntimeError:
        structlog.get_logger("tierbatch.test").exception("failed")
    err = capsys.readouterr().err
    assert "RuntimeError: length 20" in err
    assert marker not in err


def test_standard_library_log_lines_are_scrubbed_too(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """pykka, asyncio and the HTTP clients log through ``logging``; an
    exception they log may carry the key in its message."""
    configure_logging(json_lines=False, level="info", secrets=[KEY])
    stdlib = logging.getLogger("some.library")
    try:
        _fail_with_the_key_in_the_message()
    except ValueError:
        stdlib.error("actor crashed: %s", KEY, exc_info=True)
    stdlib.info("chatter below warning is not shown")
    err = capsys.readouterr().err
    assert "actor crashed" in err and "ValueError" in err
    assert "chatter" not in err
    assert KEY not in err


def test_restore_puts_the_standard_library_handlers_back(restore_logging: None) -> None:
    before = list(logging.getLogger().handlers)
    saved = saved_configuration()
    configure_logging(json_lines=True)
    configure_logging(json_lines=False)
    assert len(logging.getLogger().handlers) == len(before) + 1
    restore_configuration(saved)
    assert logging.getLogger().handlers == before
