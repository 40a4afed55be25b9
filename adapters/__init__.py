"""Everything that touches the outside: Gemini SDKs, the simulated provider,
the local Gemini-compatible server, storage, config files, CLI, metrics.

The public names are the ones below (``__all__``): ``open_runtime`` and the
config loaders, the ready-made sinks and providers, the models check, the
daemon, the store, and the errors raised here (the hierarchy's families are
in ``tierbatch.policies``). Import them from here; the subpackages' modules
are internal. They load on first use (PEP 562): importing one storage
module does not drag in the command line, the SDKs or the daemon, and an
inner room (gemini, storage, simulation) never imports the application
through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierbatch.adapters.app.call_stats import CallStatsProvider
    from tierbatch.adapters.app.daemon import Daemon, DaemonOptions, DaemonReport
    from tierbatch.adapters.app.embedding import EmbeddedRuntime, open_runtime
    from tierbatch.adapters.app.model_check import ModelReport, NoModelLeftError, check_models
    from tierbatch.adapters.app.provider_factory import make_provider
    from tierbatch.adapters.gemini.api_key import MissingApiKeyError
    from tierbatch.adapters.gemini.batch_client import BatchError
    from tierbatch.adapters.gemini.genai_provider import GenaiProvider
    from tierbatch.adapters.gemini.origin import InvalidBaseUrlError
    from tierbatch.adapters.simulation.simulated import SimulatedFaults, SimulatedProvider
    from tierbatch.adapters.storage.config_file import (
        default_config,
        load_config,
        parse_config_text,
        render_config,
    )
    from tierbatch.adapters.storage.jsonl_input import InvalidArticleError, Rejected, read_articles
    from tierbatch.adapters.storage.jsonl_sink import CallbackSink, JsonlSink
    from tierbatch.adapters.storage.open_store import MissingPostgresDriverError, open_store
    from tierbatch.adapters.storage.result_json import InvalidResultRecordError
    from tierbatch.adapters.storage.results_sink import ResultsNotWrittenError
    from tierbatch.adapters.storage.store import IncompatibleSchemaError, Store

# Public name -> the module that defines it.
_HOMES = {
    "CallStatsProvider": "app.call_stats",
    "Daemon": "app.daemon",
    "DaemonOptions": "app.daemon",
    "DaemonReport": "app.daemon",
    "EmbeddedRuntime": "app.embedding",
    "open_runtime": "app.embedding",
    "ModelReport": "app.model_check",
    "NoModelLeftError": "app.model_check",
    "check_models": "app.model_check",
    "make_provider": "app.provider_factory",
    "MissingApiKeyError": "gemini.api_key",
    "BatchError": "gemini.batch_client",
    "GenaiProvider": "gemini.genai_provider",
    "InvalidBaseUrlError": "gemini.origin",
    "SimulatedFaults": "simulation.simulated",
    "SimulatedProvider": "simulation.simulated",
    "default_config": "storage.config_file",
    "load_config": "storage.config_file",
    "parse_config_text": "storage.config_file",
    "render_config": "storage.config_file",
    "InvalidArticleError": "storage.jsonl_input",
    "Rejected": "storage.jsonl_input",
    "read_articles": "storage.jsonl_input",
    "CallbackSink": "storage.jsonl_sink",
    "JsonlSink": "storage.jsonl_sink",
    "MissingPostgresDriverError": "storage.open_store",
    "open_store": "storage.open_store",
    "InvalidResultRecordError": "storage.result_json",
    "ResultsNotWrittenError": "storage.results_sink",
    "IncompatibleSchemaError": "storage.store",
    "Store": "storage.store",
}

__all__ = [
    "BatchError",
    "CallStatsProvider",
    "CallbackSink",
    "Daemon",
    "DaemonOptions",
    "DaemonReport",
    "EmbeddedRuntime",
    "GenaiProvider",
    "IncompatibleSchemaError",
    "InvalidArticleError",
    "InvalidBaseUrlError",
    "InvalidResultRecordError",
    "JsonlSink",
    "MissingApiKeyError",
    "MissingPostgresDriverError",
    "ModelReport",
    "NoModelLeftError",
    "Rejected",
    "ResultsNotWrittenError",
    "SimulatedFaults",
    "SimulatedProvider",
    "Store",
    "check_models",
    "default_config",
    "load_config",
    "make_provider",
    "open_runtime",
    "open_store",
    "parse_config_text",
    "read_articles",
    "render_config",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next look-up does not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
