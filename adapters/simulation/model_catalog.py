"""The fake server's model catalogue: ``GET /{v1,v1beta}/models`` and
``GET /{v1,v1beta}/models/{model}`` answered in Gemini's JSON shape.

What exists: with an explicit ``catalog`` exactly those models (any other
name is 404, for generateContent too); without one, every name that is not
retired (as generateContent serves any name), and a listing shows the
configured ``models`` plus Gemini's current ones. A retired model is 404
everywhere, with Gemini's "models/X is not found" body.

The numbers follow Gemini's: ``inputTokenLimit`` is the configured
``max_input_tokens`` (1 048 576 for a model the config does not name),
``outputTokenLimit`` 65 536, and ``supportedGenerationMethods`` lists
``batchGenerateContent`` unless the model is one of ``without_batch``.
Listing pages like Gemini's: ``pageSize`` (default 50, at most 1000) and an
opaque ``nextPageToken`` to pass back as ``pageToken``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from tierbatch.policies.config import ModelSpec
from tierbatch.policies.errors import TierbatchError

__all__ = [
    "CURRENT_GEMINI_MODELS",
    "DEFAULT_INPUT_TOKEN_LIMIT",
    "DEFAULT_OUTPUT_TOKEN_LIMIT",
    "BadPageTokenError",
    "ModelCatalog",
]

CURRENT_GEMINI_MODELS = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite")
"""Listed by a server without an explicit catalogue, beside the configured models."""

DEFAULT_INPUT_TOKEN_LIMIT = 1_048_576
DEFAULT_OUTPUT_TOKEN_LIMIT = 65_536
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_METHODS = ("generateContent", "countTokens", "createCachedContent")
_BATCH = "batchGenerateContent"


class BadPageTokenError(TierbatchError, ValueError):
    """A ``pageToken`` this server did not hand out."""


class ModelCatalog:
    """Which models exist and what a models.get/list answer says of them."""

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        *,
        catalog: AbstractSet[str] | None,
        retired: AbstractSet[str],
        without_batch: AbstractSet[str],
    ) -> None:
        self._models = models
        self._catalog = catalog
        self._retired = retired
        self._without_batch = without_batch

    def exists(self, model: str) -> bool:
        if model in self._retired:
            return False
        return self._catalog is None or model in self._catalog

    def supports_batch(self, model: str) -> bool:
        return self.exists(model) and model not in self._without_batch

    def listed(self) -> list[str]:
        """Every model a listing shows, in a stable order."""
        names: Collection[str] = (
            self._catalog if self._catalog is not None else {*self._models, *CURRENT_GEMINI_MODELS}
        )
        return sorted(name for name in names if self.exists(name))

    def document(self, model: str) -> dict[str, Any]:
        """The model's JSON, as ``GET /v1beta/models/{model}`` answers."""
        spec = self._models.get(model)
        limit = spec.max_input_tokens if spec is not None and spec.max_input_tokens > 0 else 0
        methods = [*_METHODS] if model in self._without_batch else [*_METHODS, _BATCH]
        return {
            "name": f"models/{model}",
            "version": "001",
            "displayName": display_name(model),
            "description": f"{display_name(model)}, as served by the local fake Gemini server.",
            "inputTokenLimit": limit or DEFAULT_INPUT_TOKEN_LIMIT,
            "outputTokenLimit": DEFAULT_OUTPUT_TOKEN_LIMIT,
            "supportedGenerationMethods": methods,
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
            "thinking": True,
        }

    def page(self, page_size: int | None, page_token: str | None) -> dict[str, Any]:
        """One page of the listing; raises ``BadPageTokenError``."""
        names = self.listed()
        size = DEFAULT_PAGE_SIZE if not page_size or page_size < 1 else page_size
        size = min(size, MAX_PAGE_SIZE)
        start = decode_page_token(page_token) if page_token else 0
        chosen: Sequence[str] = names[start : start + size]
        document: dict[str, Any] = {"models": [self.document(name) for name in chosen]}
        if start + size < len(names):
            document["nextPageToken"] = encode_page_token(start + size)
        return document


def display_name(model: str) -> str:
    """``gemini-2.5-flash-lite`` -> ``Gemini 2.5 Flash Lite``."""
    return " ".join(part[:1].upper() + part[1:] for part in model.split("-") if part)


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"page:{offset}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadPageTokenError(token) from exc
    prefix, _, number = text.partition(":")
    if prefix != "page" or not number.isdigit():
        raise BadPageTokenError(token)
    return int(number)
