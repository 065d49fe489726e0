"""Which adapter class serves which vendor kind."""

from __future__ import annotations

import httpx

from agents.adapters.anthropic import AnthropicAdapter
from agents.adapters.azure import AzureOpenAIAdapter
from agents.adapters.ollama import OllamaAdapter
from agents.adapters.openai import OpenAIAdapter
from schemas.config import VendorConfig

Adapter = OpenAIAdapter | AnthropicAdapter | OllamaAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "azure": AzureOpenAIAdapter,
    "anthropic": AnthropicAdapter,
    "ollama": OllamaAdapter,
}


def make_adapter(config: VendorConfig, client: httpx.AsyncClient) -> Adapter:
    """The adapter for ``config.kind``, sharing the caller's HTTP client (and its pool)."""
    try:
        cls = ADAPTERS[config.kind]
    except KeyError:
        raise ValueError(f"no adapter for vendor kind {config.kind!r}") from None
    return cls(config, client)
