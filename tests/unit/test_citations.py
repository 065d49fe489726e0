"""Citations from an Anthropic vendor to an Anthropic client, through the neutral
(OpenAI-shaped) body and chunks: each cited span stays a text block of its own with its
citations, streamed or not, replayed from the cache or not, and vendors that do not know
them never see them."""

from __future__ import annotations

from typing import Any

from schemas.formats.anthropic import (
    messages_response_to_openai,
    openai_response_to_messages,
    without_cache_control,
)
from schemas.formats.openai import assemble_chunks, response_to_chunks
from schemas.usage import Usage
from tests.support.anthropic_stream import blocks, client_message, through_a_stream

CITATION = {
    "type": "char_location",
    "cited_text": "The grass is green.",
    "document_index": 0,
    "document_title": "Example Document",
    "start_char_index": 0,
    "end_char_index": 20,
}
CITED = {"type": "text", "text": "the grass is green", "citations": [CITATION]}
# As Anthropic answers with citations: uncited text between cited spans, each a block.
CONTENT: list[dict[str, Any]] = [
    {"type": "text", "text": "According to the document, "},
    CITED,
    {"type": "text", "text": " and "},
    {"type": "text", "text": "the sky is blue", "citations": [{**CITATION, "cited_text": "Sky."}]},
]
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": CONTENT,
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 30},
}


def test_a_whole_answer_keeps_each_cited_span_and_openai_clients_get_the_text() -> None:
    neutral, usage = messages_response_to_openai(MESSAGE)
    message = neutral["choices"][0]["message"]
    assert message["content"] == "According to the document, the grass is green and the sky is blue"
    assert openai_response_to_messages(neutral, usage, "claude")["content"] == CONTENT


def test_a_streamed_answer_keeps_each_cited_span_in_its_own_block() -> None:
    chunks, streamed = through_a_stream(MESSAGE)
    assert blocks(streamed) == CONTENT
    assembled = assemble_chunks(chunks)
    message = assembled["choices"][0]["message"]
    assert message["content"] == "According to the document, the grass is green and the sky is blue"
    assert message["anthropic_content"] == CONTENT, "a cached stream keeps them too"


def test_a_replay_from_the_cache_keeps_them_streamed_or_whole() -> None:
    chunks, _ = through_a_stream(MESSAGE)
    assembled = assemble_chunks(chunks)
    assert blocks(client_message(response_to_chunks(assembled))) == CONTENT
    whole, _ = messages_response_to_openai(MESSAGE)
    assert blocks(client_message(response_to_chunks(whole))) == CONTENT
    assert openai_response_to_messages(assembled, Usage(), "claude")["content"] == CONTENT


def test_an_answer_without_citations_streams_as_one_text_block() -> None:
    plain = {**MESSAGE, "content": [{"type": "text", "text": "just text"}]}
    chunks, streamed = through_a_stream(plain)
    assert blocks(streamed) == [{"type": "text", "text": "just text"}]
    assert all("text_block" not in c["choices"][0]["delta"] for c in chunks)
    assert "anthropic_content" not in assemble_chunks(chunks)["choices"][0]["message"]


def test_an_echoed_cited_answer_reaches_an_openai_vendor_as_plain_text() -> None:
    """The openai SDK folds the stream's extension keys into the message it echoes."""
    echoed = {"role": "assistant", "content": "the grass is green", "text_block": 4}
    echoed["citation"] = CITATION
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}, echoed]}
    assert without_cache_control(body)["messages"][1] == {
        "role": "assistant",
        "content": "the grass is green",
    }
