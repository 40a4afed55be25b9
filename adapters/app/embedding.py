"""The one-call way to embed tierbatch in a daemon.

    from tierbatch.adapters.app.embedding import open_runtime

    with open_runtime("tierbatch.toml", sink=my_sink) as runtime:
        runtime.submit(articles)
        runtime.drain()

It loads the config, picks the provider the config asks for (Gemini through
google-genai when an API key is set, else the in-process simulation -- and
says which in ``runtime.provider_description``), and returns a ``Runtime``
ready to start. Everything can be overridden for tests and rehearsals.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import structlog

from tierbatch.actors.clock import Clock, SystemClock
from tierbatch.actors.observer import RegistryObserver
from tierbatch.actors.ports import Provider, Sink
from tierbatch.actors.runtime import Runtime
from tierbatch.actors.sinks import CollectingSink
from tierbatch.adapters.app.call_stats import DEFAULT_INTERVAL_S, CallStatsProvider
from tierbatch.adapters.app.provider_factory import make_provider
from tierbatch.adapters.storage.config_file import load_config
from tierbatch.policies.config import Config

_log = structlog.get_logger(__name__)


class EmbeddedRuntime(Runtime):
    """A ``Runtime`` that remembers, in words, which provider it calls."""

    provider_description: str = ""


def open_runtime(
    config: Config | str | os.PathLike[str] | None = None,
    *,
    sink: Sink | None = None,
    provider: Provider | None = None,
    clock: Clock | None = None,
    api_key: str | None = None,
    quota_state: Mapping[str, Any] | None = None,
    observer: RegistryObserver | None = None,
    stats_interval_s: float | None = DEFAULT_INTERVAL_S,
) -> EmbeddedRuntime:
    """Build a runtime from a config object or TOML path (None: the shipped
    default). Without ``sink`` results are collected in memory
    (``runtime.sink.results``). Every ``stats_interval_s`` seconds of calls
    a ``provider calls`` line sums them up at info level (None or 0: none;
    per-call lines are at debug). Returns it unstarted: use it in a
    ``with`` block or call ``start()``."""
    resolved = config if isinstance(config, Config) else load_config(config)
    clock = clock or SystemClock()
    if provider is None:
        provider, description = make_provider(resolved, clock, api_key=api_key)
    else:
        description = f"custom provider ({type(provider).__name__})"
    if stats_interval_s:
        provider = CallStatsProvider(provider, stats_interval_s)
    runtime = EmbeddedRuntime(
        resolved,
        provider,
        sink if sink is not None else CollectingSink(),
        clock=clock,
        quota_state=quota_state,
        observer=observer,
    )
    runtime.provider_description = description
    _log.info("provider selected", provider=description)
    return runtime
