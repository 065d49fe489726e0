"""Pure translations between the wire formats the relay speaks (OpenAI, Anthropic)."""

from schemas.formats.anthropic import (
    ChunksToMessageEvents,
    MessageEventsToChunks,
    messages_request_to_openai,
    messages_response_to_openai,
    openai_request_to_messages,
    openai_response_to_messages,
)
from schemas.formats.openai import assemble_chunks, new_id, response_to_chunks

__all__ = [
    "ChunksToMessageEvents",
    "MessageEventsToChunks",
    "assemble_chunks",
    "messages_request_to_openai",
    "messages_response_to_openai",
    "new_id",
    "openai_request_to_messages",
    "openai_response_to_messages",
    "response_to_chunks",
]
