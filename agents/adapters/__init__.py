"""One adapter per vendor behind small capability protocols (chat, embeddings, batch)."""

from agents.adapters.anthropic import AnthropicAdapter
from agents.adapters.azure import AzureOpenAIAdapter
from agents.adapters.base import (
    BatchCleaner,
    BatchVendor,
    ChatVendor,
    EmbeddingVendor,
    StreamItem,
    TokenCounter,
    VendorCall,
    VendorResult,
)
from agents.adapters.ollama import OllamaAdapter
from agents.adapters.openai import OpenAIAdapter
from agents.adapters.registry import ADAPTERS, Adapter, make_adapter

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnthropicAdapter",
    "AzureOpenAIAdapter",
    "BatchCleaner",
    "BatchVendor",
    "ChatVendor",
    "EmbeddingVendor",
    "OllamaAdapter",
    "OpenAIAdapter",
    "StreamItem",
    "TokenCounter",
    "VendorCall",
    "VendorResult",
    "make_adapter",
]
