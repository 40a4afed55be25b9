"""Pick the provider a configuration asks for, and say in words what was picked.

``auto`` means: the real Gemini API (google-genai) when an API key is found
in the environment variables the config names, else the in-process
simulation, so a fresh checkout runs without a key and never by accident
against a paid API. An explicit ``genai`` or ``legacy`` without a key is an
error (``MissingApiKeyError``) rather than a silent fallback to the simulation.

The SDK providers get a connection pool (google-genai) or thread pool
(google-generativeai) as large as the calls the runtime can have in flight,
so no call queues in front of the network.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tierbatch.actors.clock import Clock, SystemClock
from tierbatch.actors.ports import Provider
from tierbatch.adapters.gemini.api_key import find_api_key
from tierbatch.policies.config import Config, ProviderKind, ProviderLimiter


def calls_in_flight_limit(config: Config) -> int:
    """The most provider calls the runtime can have out at once.

    Each extractor asks for a batch while it holds fewer than
    ``max_packs_in_flight`` packs, and a batch (``composer.batch_size``
    articles) can become one pack per article: so up to
    ``max_packs_in_flight - 1 + batch_size`` per extractor, plus the packs a
    truncated answer splits into -- a batch's worth is the margin for those.
    """
    runtime = config.runtime
    return runtime.extractors * (runtime.max_packs_in_flight + config.composer.batch_size)


def make_provider(
    config: Config, clock: Clock, *, api_key: str | None = None
) -> tuple[Provider, str]:
    """The provider and a one-line description for logs and the CLI."""
    kind = config.provider.kind
    if kind is ProviderKind.AUTO:
        found = find_api_key(config.provider.api_key_env, api_key)
        if found is None:
            names = ", ".join(config.provider.api_key_env)
            return _simulated(config, clock, f"simulated (no API key set in {names})")
        kind, api_key = ProviderKind.GENAI, found
    if kind is ProviderKind.GENAI:
        from tierbatch.adapters.gemini.genai_provider import GenaiProvider

        genai_provider = GenaiProvider(
            config.provider,
            api_key=api_key,
            default_timeout_s=config.retry.request_timeout_s,
            max_connections=calls_in_flight_limit(config),
            task=config.task,
        )
        return genai_provider, genai_provider.description
    if kind is ProviderKind.LEGACY:
        from tierbatch.adapters.gemini.legacy_provider import LegacyProvider

        legacy_provider = LegacyProvider(
            config.provider,
            api_key=api_key,
            max_workers=calls_in_flight_limit(config),
            task=config.task,
        )
        return legacy_provider, legacy_provider.description
    return _simulated(config, clock, "simulated (provider.kind = simulated)")


def provider_on_this_node(config: Config) -> tuple[Provider, str]:
    """The provider a caller actor on Ray builds on its own node (``daemon
    --ray-extractors``), with the API key from that node's environment.
    ``config`` names a resolved kind (``resolved_kind``): ``auto`` there
    would quietly simulate on a node without the key."""
    return make_provider(config, SystemClock())


def resolved_kind(config: Config, provider: Provider) -> Config:
    """``config`` with ``provider.kind`` set to the kind ``provider`` is."""
    from tierbatch.adapters.simulation.simulated import SimulatedProvider

    kind = ProviderKind.GENAI
    if isinstance(provider, SimulatedProvider):
        kind = ProviderKind.SIMULATED
    elif type(provider).__name__ == "LegacyProvider":
        kind = ProviderKind.LEGACY
    return replace(config, provider=replace(config.provider, kind=kind))


def make_batch_backend(config: Config, provider: object) -> Any | None:
    """The Batch API client for a config whose tiers use it, when the
    provider is google-genai's (the Batch API is only there); else None."""
    if not config.uses_batch:
        return None
    from tierbatch.adapters.gemini.genai_provider import GenaiProvider

    if not isinstance(provider, GenaiProvider):
        return None
    from tierbatch.adapters.gemini.batch_client import GeminiBatchClient

    return GeminiBatchClient(
        config.provider,
        api_key=find_api_key(config.provider.api_key_env, None),
        timeout_s=config.retry.request_timeout_s,
        task=config.task,
    )


def _simulated(config: Config, clock: Clock, description: str) -> tuple[Provider, str]:
    from tierbatch.adapters.simulation.simulated import SimulatedProvider

    simulation = config.simulation
    provider = SimulatedProvider(
        simulation.enforced(config.models),
        clock,
        window_s=config.quota.window_s,
        timezone=config.quota.timezone,
        limiter=simulation.limiter,
        bucket_s=simulation.bucket_s,
        task=config.task,
    )
    return provider, description + _simulated_shape(config)


def _simulated_shape(config: Config) -> str:
    """What the simulated provider enforces, when it is not simply the
    configured limits in a rolling window."""
    simulation = config.simulation
    parts = []
    if simulation.limiter is ProviderLimiter.BUCKET:
        parts.append(f"token buckets of {simulation.bucket_s:g} s")
    enforced = simulation.enforced(config.models)
    for name, spec in enforced.items():
        configured = config.models[name]
        if (spec.rpm, spec.tpm, spec.rpd) != (configured.rpm, configured.tpm, configured.rpd):
            changed = [
                f"{what} {true}"
                for what, true, claimed in (
                    ("rpm", spec.rpm, configured.rpm),
                    ("tpm", spec.tpm, configured.tpm),
                    ("rpd", spec.rpd, configured.rpd),
                )
                if true != claimed
            ]
            parts.append(f"{name} {', '.join(changed)}")
    return f" (enforcing {'; '.join(parts)})" if parts else ""
