"""A deterministic fake LLM vendor speaking OpenAI, Azure, Anthropic and Ollama wire formats."""

from simulator.app import create_app, serve
from simulator.faults import SimConfig

__all__ = ["SimConfig", "create_app", "serve"]
