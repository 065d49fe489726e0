"""A chat answer's ``url_citation`` annotations (a search model's, an OpenRouter
``:online`` model's) reach a Responses client in the Responses API's flat form, whole
and streamed (``response.output_text.annotation.added``), and from the cache too, as
the official SDK's types and stream accumulator read them."""

from __future__ import annotations

from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from schemas.formats.openai import assemble_chunks, response_to_chunks
from schemas.formats.responses import ChunksToResponseEvents, openai_response_to_responses
from schemas.usage import Usage

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
REQUEST = {"model": "gpt-4o-search-preview", "input": "News?"}
TEXT = "Rain in Oslo today, says the forecast."
CITE = {"url": "https://yr.no/oslo", "title": "Yr: Oslo", "start_index": 0, "end_index": 18}
CHAT_CITE = {"type": "url_citation", "url_citation": CITE}
FLAT = {"type": "url_citation", **CITE}


def completion(annotations: list[Any], calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": TEXT, "annotations": annotations}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-search-preview",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


def streamed(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events for ``chunks``, each read by the SDK's types and its accumulator."""
    events = ChunksToResponseEvents(REQUEST, "resp_1")
    out = events.start()
    for chunk in chunks:
        out += events.feed(chunk)
    out += events.finish(Usage(input_tokens=3, output_tokens=9))
    state = ResponseStreamState(input_tools=omit, text_format=omit)  # type: ignore[var-annotated]
    for _, data in out:
        state.handle_event(EVENTS.validate_python(data))
    return [data for _, data in out]


def chunk(delta: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_a_whole_answer_s_citations_are_its_text_s_annotations() -> None:
    other = {"type": "file_citation", "file_citation": {"file_id": "f"}}
    broken = {"type": "url_citation", "url_citation": {"title": "no url"}}
    body = completion([CHAT_CITE, other, broken, "junk"])
    response = Response.model_validate(openai_response_to_responses(body, Usage(), REQUEST))
    part = response.output[0].content[0]  # type: ignore[union-attr]
    assert part.type == "output_text"
    assert [a.model_dump() for a in part.annotations] == [FLAT]


def test_a_streamed_answer_announces_each_citation_on_its_text() -> None:
    """OpenAI streams a search answer's annotations after the text they cite."""
    second = {**CITE, "url": "https://met.no", "start_index": 19, "end_index": 37}
    chunks = [
        chunk({"role": "assistant", "content": TEXT}),
        chunk({"annotations": [CHAT_CITE]}),
        chunk({"annotations": [{"type": "url_citation", "url_citation": second}]}),
    ]
    events = streamed(chunks)
    added = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    message_id = events[-1]["response"]["output"][0]["id"]
    assert [
        (e["item_id"], e["output_index"], e["content_index"], e["annotation_index"]) for e in added
    ] == [(message_id, 0, 0, 0), (message_id, 0, 0, 1)]
    assert [e["annotation"] for e in added] == [FLAT, {"type": "url_citation", **second}]
    done = next(e for e in events if e["type"] == "response.content_part.done")
    assert done["part"]["annotations"] == [FLAT, {"type": "url_citation", **second}]
    final = Response.model_validate(events[-1]["response"])
    assert final.output[0].content[0].annotations[1].url == "https://met.no"  # type: ignore[union-attr]


def test_citations_that_come_before_their_text_or_after_it_closed_still_reach_it() -> None:
    early = streamed([chunk({"annotations": [CHAT_CITE]}), chunk({"content": TEXT})])
    assert [e["annotation"] for e in early if "annotation" in e] == [FLAT]
    assert early[-1]["response"]["output"][0]["content"][0]["annotations"] == [FLAT]
    call = {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    late = streamed(
        [
            chunk({"content": TEXT}),
            chunk({"tool_calls": [call]}),
            chunk({"annotations": [CHAT_CITE]}),
        ]
    )
    final = Response.model_validate(late[-1]["response"])
    assert final.output[0].content[0].annotations[0].url == CITE["url"]  # type: ignore[union-attr]


@pytest.mark.parametrize("served", ["whole", "streamed"])
def test_a_cached_answer_keeps_its_citations(served: str) -> None:
    """A hit is served from the stored answer: a whole body (replayed as chunks for a
    streamed request) or a vendor's stored stream (assembled for a whole one)."""
    body = completion([CHAT_CITE])
    if served == "streamed":
        output = streamed(response_to_chunks(body))[-1]["response"]["output"]
    else:
        stored = response_to_chunks(body)
        output = openai_response_to_responses(assemble_chunks(stored), Usage(), REQUEST)["output"]
    assert output[0]["content"][0]["annotations"] == [FLAT]
