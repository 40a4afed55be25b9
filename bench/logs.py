"""Logging for the bench's own processes (applications, so they may configure it)."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def quiet_logs(level: int = logging.WARNING) -> None:
    """Only warnings and errors, to standard error: the runtime's per-call
    debug logs would otherwise cost CPU inside the measurements, and standard
    output carries the harness's JSON lines. Also keeps LiteLLM from fetching
    its model price map over the network at import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr)
