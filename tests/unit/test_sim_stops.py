"""Stop sequences: each vendor's answer ends just before the first one its text holds,
leaves it out, and says it stopped, whole and streamed, in its own words."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

AV = {"anthropic-version": "2023-06-01"}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse_data(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.fixture
def claude(app: Any) -> anthropic.AsyncAnthropic:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim")
    return anthropic.AsyncAnthropic(base_url="http://sim", api_key="x", http_client=http)


def pick(text: str, n: int = 4) -> tuple[str, str]:
    """A stop sequence out of the answer's ``n``-th word, and the text before it."""
    sequence = text.split()[n].strip(".")
    return sequence, text[: text.index(sequence)]


async def test_openai_stops_before_the_sequence_with_finish_stop(sim: httpx.AsyncClient) -> None:
    ask = {"model": "gpt-4o-mini", "messages": user("tell me about the sea")}
    plain = (await sim.post("/v1/chat/completions", json=ask)).json()
    text = plain["choices"][0]["message"]["content"]
    sequence, before = pick(text)
    for stop in (sequence, ["not in it", sequence], None):
        body = {**ask, "stop": stop}
        whole = (await sim.post("/v1/chat/completions", json=body)).json()
        streamed = sse_data(
            (await sim.post("/v1/chat/completions", json={**body, "stream": True})).text
        )
        said = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
        want = text if stop is None else before
        assert whole["choices"][0]["message"]["content"] == said == want
        assert whole["choices"][0]["finish_reason"] == streamed[-1]["choices"][0]["finish_reason"]
        assert whole["choices"][0]["finish_reason"] == "stop"
        if stop is not None:  # the sequence is written (and billed), though left out
            used = whole["usage"]["completion_tokens"]
            assert used == len(before.split()) + 1 < plain["usage"]["completion_tokens"]
    legacy = {"model": "davinci", "prompt": "tell me about the sea"}
    text = (await sim.post("/v1/completions", json=legacy)).json()["choices"][0]["text"]
    sequence, before = pick(text)
    got = (await sim.post("/v1/completions", json={**legacy, "stop": [sequence]})).json()
    assert (got["choices"][0]["text"], got["choices"][0]["finish_reason"]) == (before, "stop")
    wrong = await sim.post("/v1/chat/completions", json={**ask, "stop": 5})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_type"


async def test_the_first_sequence_in_the_text_is_the_one_that_stops_it(
    sim: httpx.AsyncClient,
) -> None:
    ask = {"model": "gpt-4o-mini", "messages": user("tell me about the sea")}
    text = (await sim.post("/v1/chat/completions", json=ask)).json()["choices"][0]["message"]
    later, _ = pick(text["content"], 6)
    sooner, before = pick(text["content"], 2)
    got = (await sim.post("/v1/chat/completions", json={**ask, "stop": [later, sooner]})).json()
    assert got["choices"][0]["message"]["content"] == before


async def test_anthropic_says_stop_sequence_and_which(
    sim: httpx.AsyncClient, claude: anthropic.AsyncAnthropic
) -> None:
    ask: Any = {"model": "claude-sonnet-4-5", "max_tokens": 300, "messages": user("the sea?")}
    plain = await claude.messages.create(**ask)
    text = plain.content[0].text  # type: ignore[union-attr]
    sequence, before = pick(text)
    stops = ["never said", sequence]
    msg = await claude.messages.create(**ask, stop_sequences=stops)
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", sequence)
    assert [b.text for b in msg.content] == [before]  # type: ignore[union-attr]
    assert msg.usage.output_tokens == len(before.split()) + 1
    async with claude.messages.stream(**ask, stop_sequences=stops) as stream:
        final = await stream.get_final_message()
    assert final.model_dump(exclude={"id"}) == msg.model_dump(exclude={"id"})
    raw = await sim.post(
        "/v1/messages", headers=AV, json={**ask, "stop_sequences": stops, "stream": True}
    )
    [delta] = [e for e in sse_data(raw.text) if e["type"] == "message_delta"]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": sequence}
    # A sequence the answer never reaches: it ends as it would have.
    unmet = await claude.messages.create(**ask, stop_sequences=["never said"])
    assert (unmet.stop_reason, unmet.stop_sequence) == ("end_turn", None)
    # max_tokens comes first when it cuts the text before the sequence.
    short = await claude.messages.create(**{**ask, "max_tokens": 2}, stop_sequences=stops)
    assert (short.stop_reason, short.stop_sequence) == ("max_tokens", None)
    wrong = await sim.post("/v1/messages", headers=AV, json={**ask, "stop_sequences": [5]})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["type"] == "invalid_request_error"


async def test_ollama_stops_at_options_stop_with_done_reason_stop(sim: httpx.AsyncClient) -> None:
    ask = {"model": "llama3.2", "messages": user("the sea?"), "stream": False}
    text = (await sim.post("/api/chat", json=ask)).json()["message"]["content"]
    sequence, before = pick(text)
    body = {**ask, "options": {"stop": [sequence]}}
    whole = (await sim.post("/api/chat", json=body)).json()
    lines = [
        json.loads(x)
        for x in (await sim.post("/api/chat", json={**body, "stream": True})).text.splitlines()
    ]
    said = "".join(x["message"]["content"] for x in lines)
    assert whole["message"]["content"] == said == before
    assert whole["done_reason"] == lines[-1]["done_reason"] == "stop"
    assert whole["eval_count"] == lines[-1]["eval_count"] == len(before.split()) + 1
