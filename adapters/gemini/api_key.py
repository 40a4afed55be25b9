"""Where the Gemini API key comes from: an explicit argument, else the
environment variables the config names. The key is never stored in config
files or written to logs; this is the one place that reads it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from tierbatch.policies.errors import ProviderError


class MissingApiKeyError(ProviderError):
    """No API key was given and none of the named environment variables is set."""

    def __init__(self, env_names: Sequence[str]) -> None:
        names = ", ".join(env_names) or "(none configured)"
        super().__init__(
            f"no Gemini API key: pass api_key= or set one of these environment variables: {names}"
        )
        self.env_names = tuple(env_names)


def find_api_key(
    env_names: Sequence[str],
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The explicit key, else the first non-blank variable of ``env_names``."""
    if explicit is not None and explicit.strip():
        return explicit.strip()
    env = os.environ if environ is None else environ
    for name in env_names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def require_api_key(
    env_names: Sequence[str],
    explicit: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Like ``find_api_key``, raising ``MissingApiKeyError`` naming the variables."""
    key = find_api_key(env_names, explicit, environ)
    if key is None:
        raise MissingApiKeyError(env_names)
    return key
