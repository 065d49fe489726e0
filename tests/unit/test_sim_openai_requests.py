"""What the simulator's OpenAI API refuses and answers as OpenAI does: ``reasoning_effort``
on a model that does not reason, tool choices that name no offered tool, and several
answers to one prompt (``n``, ``best_of``); and the relay's OpenAI adapter against it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import openai
import pytest

from agents.adapters import OpenAIAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import VendorBadRequest
from schemas.formats.anthropic import messages_request_to_openai
from schemas.formats.openai import assemble_chunks
from schemas.usage import Usage

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
EFFORT_REFUSED = {
    "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
    "type": "invalid_request_error",
    "param": "reasoning_effort",
    "code": "unsupported_parameter",
}
NO_TOOLS = (
    "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse_data(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def adapter(sim: httpx.AsyncClient) -> OpenAIAdapter:
    return OpenAIAdapter(VendorConfig(kind="openai", base_url="http://sim/v1"), sim)


@pytest.fixture
def oai(app: Any) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://sim")
    return openai.AsyncOpenAI(
        base_url="http://sim/v1", api_key="x", http_client=http, max_retries=0
    )


# ---- reasoning_effort -----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-3.5-turbo"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_that_does_not_reason_refuses_reasoning_effort(
    sim: httpx.AsyncClient, model: str, stream: bool
) -> None:
    body = {"model": model, "messages": user("hi"), "reasoning_effort": "low", "stream": stream}
    r = await sim.post("/v1/chat/completions", json=body)
    assert (r.status_code, r.json()) == (400, {"error": EFFORT_REFUSED})
    azure = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    r = await sim.post(azure, json={**body, "model": None}, headers={"api-key": "k"})
    assert (r.status_code, r.json()) == (400, {"error": EFFORT_REFUSED})
    assert (await sim.get("/stats")).json()["total"] == 0, "refused before the model"
    r = await sim.post("/v1/chat/completions", json={**body, "reasoning_effort": None})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "model", ["o1", "o3-mini", "o4-mini-2025-04-16", "gpt-5", "gpt-5-mini", "gpt-oss:20b"]
)
async def test_a_reasoning_model_takes_reasoning_effort(sim: httpx.AsyncClient, model: str) -> None:
    body = {"model": model, "messages": user("hi"), "reasoning_effort": "high"}
    r = await sim.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


class Recording(httpx.AsyncBaseTransport):
    """The app's transport, keeping the body of each request sent through it."""

    def __init__(self, app: Any, seen: list[dict[str, Any]]) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)


async def test_an_anthropic_clients_thinking_is_served_by_a_model_that_does_not_reason(
    app: Any, sim: httpx.AsyncClient
) -> None:
    """Thinking asked by an Anthropic client goes out as reasoning_effort; gpt-4o-mini
    refuses it, and the relay's adapter asks again without it: the client is answered,
    streamed or not, with what the model says to the request without the field."""
    asked = {
        "model": "claude-haiku",
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": user("hello"),
    }
    body = messages_request_to_openai(asked)
    seen: list[dict[str, Any]] = []
    recorded = httpx.AsyncClient(transport=Recording(app, seen), base_url="http://sim")
    call = VendorCall(model="gpt-4o-mini", body=body, api_key="k")
    whole = await adapter(recorded).chat(call)
    *chunks, usage = [item async for item in adapter(recorded).stream(call)]
    assert [sent.get("reasoning_effort") for sent in seen] == ["low", None] * 2
    want = await sim.post("/v1/chat/completions", json=seen[1])
    text = want.json()["choices"][0]["message"]["content"]
    assert whole.body["choices"][0]["message"]["content"] == text
    assert assemble_chunks(chunks)["choices"][0]["message"]["content"] == text
    assert isinstance(usage, Usage) and usage.output_tokens == whole.usage.output_tokens

    own = {"messages": user("hello"), "reasoning_effort": "low"}  # a client's own: its 400
    with pytest.raises(VendorBadRequest) as info:
        await adapter(sim).chat(VendorCall(model="gpt-4o-mini", body=own, api_key="k"))
    assert (info.value.param, info.value.vendor_code) == (
        "reasoning_effort",
        "unsupported_parameter",
    )


# ---- tool_choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            ("Tool choice 'x' not found in 'tools' parameter.", "tool_choice", None),
        ),
        ({"tool_choice": "required"}, (NO_TOOLS, "tool_choice", None)),
        ({"tool_choice": "none"}, (NO_TOOLS, "tool_choice", None)),
        ({"tools": [], "tool_choice": "auto"}, (NO_TOOLS, "tool_choice", None)),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            (NO_TOOLS, "tool_choice", None),
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "required", "tools": [CLOCK]},
                },
            },
            (
                "Invalid value for 'tool_choice': none of the tools 'allowed_tools' lists is "
                "among 'tools'.",
                "tool_choice",
                None,
            ),
        ),
        (
            {"tools": [WEATHER], "tool_choice": "any"},
            (
                "Invalid value: 'any'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            ),
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function"}},
            (
                "Missing required parameter: 'tool_choice.function'.",
                "tool_choice.function",
                "missing_required_parameter",
            ),
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {}}},
            (
                "Missing required parameter: 'tool_choice.function.name'.",
                "tool_choice.function.name",
                "missing_required_parameter",
            ),
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}},
            (
                "Invalid value: 'tool'. Supported values are: 'function', 'custom', and "
                "'allowed_tools'.",
                "tool_choice.type",
                "invalid_value",
            ),
        ),
    ],
    ids=[
        "forced-unknown",
        "required-no-tools",
        "none-no-tools",
        "auto-empty-tools",
        "forced-no-tools",
        "allowed-none-offered",
        "unknown-word",
        "no-function",
        "no-name",
        "anthropic-shape",
    ],
)
async def test_a_tool_choice_openai_refuses_is_a_400_not_some_other_call(
    sim: httpx.AsyncClient, extra: dict[str, Any], error: tuple[str, str, str | None]
) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("what is the weather in Paris?"), **extra}
    for stream in (False, True):
        r = await sim.post("/v1/chat/completions", json={**body, "stream": stream})
        assert r.status_code == 400
        got = r.json()["error"]
        assert (got["message"], got["param"], got["code"], got["type"]) == (
            *error,
            "invalid_request_error",
        )
    assert (await sim.get("/stats")).json()["total"] == 0


async def test_a_forced_or_allowed_tool_among_the_tools_is_called(
    oai: openai.AsyncOpenAI,
) -> None:
    tools: Any = [WEATHER, CLOCK]
    forced = await oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=user("hello there"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert [c.function.name for c in forced.choices[0].message.tool_calls or []] == ["get_time"]
    allowed: Any = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [CLOCK, {"type": "function", "function": {"name": "gone"}}],
        },
    }
    got = await oai.chat.completions.create(
        model="gpt-4o-mini", messages=user("hello there"), tools=tools, tool_choice=allowed
    )
    assert [c.function.name for c in got.choices[0].message.tool_calls or []] == ["get_time"]
    with pytest.raises(openai.BadRequestError, match="not found in 'tools'"):
        await oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("hello there"),
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )


async def test_an_anthropic_clients_tool_choice_reaches_an_openai_model_as_one_it_takes(
    sim: httpx.AsyncClient,
) -> None:
    """The relay's translation of Anthropic's ``tool``/``any``/``none`` choices is what
    OpenAI takes: the named tool is called, any tool is called, none is not."""
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    for choice, called in (
        ({"type": "tool", "name": "get_weather"}, ["get_weather"]),
        ({"type": "any"}, ["get_weather"]),
        ({"type": "none"}, []),
    ):
        asked = {
            "model": "claude-haiku",
            "max_tokens": 200,
            "messages": user("hello there"),
            "tools": [tool],
            "tool_choice": choice,
        }
        body = messages_request_to_openai(asked)
        answer = await adapter(sim).chat(VendorCall(model="gpt-4o-mini", body=body, api_key="k"))
        calls = answer.body["choices"][0]["message"].get("tool_calls") or []
        assert [c["function"]["name"] for c in calls] == called, choice


# ---- n and best_of --------------------------------------------------------------------------


async def test_n_answers_are_n_choices_with_their_usage_summed(sim: httpx.AsyncClient) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("say something about kelp")}
    one = (await sim.post("/v1/chat/completions", json=body)).json()
    three = (await sim.post("/v1/chat/completions", json={**body, "n": 3})).json()
    again = (await sim.post("/v1/chat/completions", json={**body, "n": 3})).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in three["choices"]]
    assert texts[0] == one["choices"][0]["message"]["content"], "choice 0 is the only one's"
    assert len(set(texts)) == 3, "each choice an answer of its own"
    assert texts == [c["message"]["content"] for c in again["choices"]], "deterministic"
    words = sum(len(t.split()) for t in texts)
    assert three["usage"]["completion_tokens"] == words
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"], "the prompt once"
    assert three["usage"]["total_tokens"] == words + one["usage"]["prompt_tokens"]


async def test_n_streamed_interleaves_the_choices_and_assembles_to_the_whole(
    sim: httpx.AsyncClient,
) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": user("what is the weather in Paris?"),
        "tools": [WEATHER],
        "n": 2,
    }
    whole = (await sim.post("/v1/chat/completions", json=body)).json()
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse_data((await sim.post("/v1/chat/completions", json=streamed)).text)
    order = [c["choices"][0]["index"] for c in chunks if c["choices"]]
    assert order[:4] == [0, 1, 0, 1], "the choices take turns"
    assert all(len(c["choices"]) == 1 for c in chunks[:-1]) and chunks[-1]["choices"] == []
    assembled = assemble_chunks(chunks)
    ids = [c["message"]["tool_calls"][0]["id"] for c in whole["choices"]]
    assert len(set(ids)) == 2, "each choice's call has its own id"
    assert [c["message"]["tool_calls"] for c in assembled["choices"]] == [
        c["message"]["tool_calls"] for c in whole["choices"]
    ]
    assert [c["finish_reason"] for c in assembled["choices"]] == ["tool_calls", "tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("n", "code"),
    [(0, "integer_below_min_value"), (129, "integer_above_max_value"), (True, "invalid_type")],
)
async def test_n_out_of_range_is_refused(sim: httpx.AsyncClient, n: Any, code: str) -> None:
    for path, body in (
        ("/v1/chat/completions", {"messages": user("hi")}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        r = await sim.post(path, json={"model": "gpt-4o-mini", "n": n, **body})
        assert r.status_code == 400 and (r.json()["error"]["param"], r.json()["error"]["code"]) == (
            "n",
            code,
        )


async def test_the_relays_adapter_carries_n_choices_whole_and_streamed(
    sim: httpx.AsyncClient,
) -> None:
    body = {"model": "alias", "messages": user("say something about kelp"), "n": 2}
    call = VendorCall(model="gpt-4o-mini", body=body, api_key="k")
    whole = await adapter(sim).chat(call)
    *chunks, usage = [item async for item in adapter(sim).stream(call)]
    assembled = assemble_chunks(chunks)
    texts = [c["message"]["content"] for c in whole.body["choices"]]
    assert [c["message"]["content"] for c in assembled["choices"]] == texts
    assert isinstance(usage, Usage) and usage == whole.usage
    assert whole.usage.output_tokens == sum(len(t.split()) for t in texts)


async def test_legacy_completions_give_n_per_prompt_and_bill_best_of(
    sim: httpx.AsyncClient,
) -> None:
    prompts = ["say something about kelp", "and about zinc"]
    base = {"model": "gpt-3.5-turbo-instruct", "prompt": prompts}
    one = (await sim.post("/v1/completions", json=base)).json()
    two = (await sim.post("/v1/completions", json={**base, "n": 2})).json()
    assert [c["index"] for c in two["choices"]] == [0, 1, 2, 3], "prompt * n + j"
    texts = [c["text"] for c in two["choices"]]
    assert [texts[0], texts[2]] == [c["text"] for c in one["choices"]]
    assert len(set(texts)) == 4
    words = sum(len(t.split()) for t in texts)
    assert two["usage"]["completion_tokens"] == words
    assert two["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]

    best = (await sim.post("/v1/completions", json={**base, "n": 2, "best_of": 3})).json()
    assert [c["text"] for c in best["choices"]] == texts, "the first n of the candidates"
    three = (await sim.post("/v1/completions", json={**base, "n": 3})).json()
    assert best["usage"]["completion_tokens"] == three["usage"]["completion_tokens"], (
        "every candidate billed"
    )

    streamed = {**base, "n": 2, "stream": True}
    chunks = sse_data((await sim.post("/v1/completions", json=streamed)).text)
    joined = ["", "", "", ""]
    for c in chunks:
        for choice in c["choices"]:
            joined[choice["index"]] += choice["text"]
    assert joined == texts

    for extra, message in (
        ({"n": 3, "best_of": 2}, "best_of must be greater than or equal to n"),
        ({"best_of": 2, "stream": True}, "Cannot stream results with best_of greater than 1."),
        ({"best_of": 21}, "Expected a value <= 20"),
    ):
        r = await sim.post("/v1/completions", json={**base, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == "best_of", extra
        assert message in r.json()["error"]["message"]
