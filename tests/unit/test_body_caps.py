"""A request body holding more items than any client sends (messages, content parts, tool
calls, tools, stop sequences, inputs, token ids) is refused with a 400 naming the field,
before its items are validated one by one: each costs the gateway's one event loop, and a
body of 100 000 one-letter messages (3 MB) held it for half a second."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway.bodies import MAX_INPUTS, MAX_ITEMS, MAX_STOPS, MAX_TOKEN_IDS, MAX_TOOLS, MAX_TURNS
from tests.support.gateway import client, gateway_app

TURN = {"role": "user", "content": "a"}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


async def post(path: str, body: Any, **headers: str) -> tuple[int, Any, list[Any]]:
    app, bus = gateway_app()
    async with client(app) as http:
        reply = await http.post(
            path,
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json", **headers},
        )
    return reply.status_code, reply.json(), bus.published


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [TURN], **fields}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (chat(messages=[TURN] * (MAX_TURNS + 1)), "messages", f"at most {MAX_TURNS} items"),
        (  # few messages, but parts by the thousand in each
            chat(
                messages=[{"role": "user", "content": [{"type": "text", "text": "a"}] * 9_000}] * 6
            ),
            "messages",
            "content parts and tool calls",
        ),
        (chat(tools=[TOOL] * (MAX_TOOLS + 1)), "tools", f"at most {MAX_TOOLS} tools"),
        (chat(stop=["x"] * (MAX_STOPS + 1)), "stop", f"at most {MAX_STOPS} stop sequences"),
    ],
)
async def test_a_chat_body_past_a_bound_is_a_400_naming_the_field(
    body: dict[str, Any], field: str, says: str
) -> None:
    status, reply, published = await post("/v1/chat/completions", body)
    assert status == 400, reply
    assert reply["error"]["param"] == field and says in reply["error"]["message"]
    assert reply["error"]["message"].startswith(f"{field}: ")
    assert not published


async def test_the_count_is_checked_before_any_item_is() -> None:
    """A malformed message among too many: the count is what the client hears (the
    items were never validated)."""
    turns: list[Any] = [TURN] * MAX_TURNS + [{"role": 5, "content": {"not": "text"}}]
    status, reply, _ = await post("/v1/chat/completions", chat(messages=turns))
    assert status == 400 and "at most" in reply["error"]["message"]


async def test_as_many_as_the_bounds_allow_are_served() -> None:
    turns = [TURN] * MAX_TURNS
    status, reply, published = await post("/v1/chat/completions", chat(messages=turns))
    assert status == 200, reply
    assert len(published[0].body["messages"]) == MAX_TURNS


@pytest.mark.parametrize(
    ("path", "body", "field", "says"),
    [
        ("/v1/embeddings", {"input": ["x"] * (MAX_INPUTS + 1)}, "input", "inputs"),
        ("/v1/embeddings", {"input": [1] * (MAX_TOKEN_IDS + 1)}, "input", "token ids"),
        ("/v1/completions", {"prompt": [[1] * 1000] * 1001}, "prompt", "token ids"),
        ("/v1/completions", {"prompt": ["x"] * (MAX_INPUTS + 1)}, "prompt", "inputs"),
    ],
)
async def test_inputs_and_prompts_are_bounded(
    path: str, body: dict[str, Any], field: str, says: str
) -> None:
    model = "text-embed" if path == "/v1/embeddings" else "gpt-4o-mini"
    status, reply, published = await post(path, {"model": model, **body})
    assert status == 400, reply
    assert reply["error"]["param"] == field and says in reply["error"]["message"]
    assert not published


async def test_an_anthropic_body_past_a_bound_is_refused_in_its_shape() -> None:
    body = {"model": "claude-haiku", "max_tokens": 5, "messages": [TURN] * (MAX_TURNS + 1)}
    status, reply, published = await post("/v1/messages", body)
    assert status == 400 and reply["type"] == "error"
    assert reply["error"]["type"] == "invalid_request_error"
    assert reply["error"]["message"].startswith("messages: at most")
    assert not published


def test_an_anthropic_body_past_a_bound_is_refused_before_it_is_translated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Translating walks every block on the event loop: a body over a bound never gets
    that far (the count is its cost)."""
    from gateway import anthropic_routes
    from schemas.errors import BadRequest

    def translate(body: object) -> object:
        raise AssertionError("translated")

    monkeypatch.setattr(anthropic_routes, "messages_request_to_openai", translate)
    body = {"model": "claude-haiku", "max_tokens": 5, "messages": [TURN] * (MAX_TURNS + 1)}
    with pytest.raises(BadRequest) as refused:
        anthropic_routes.neutral_request(body)
    assert refused.value.param == "messages"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"input": [{"role": "user", "content": "a"}] * (MAX_TURNS + 1)}, "input"),
        ({"input": "hi", "tools": [{"type": "function", "name": "f"}] * (MAX_TOOLS + 1)}, "tools"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_text", "text": "a"}] * MAX_ITEMS}
                ]
            },
            "input",
        ),
    ],
)
async def test_a_responses_body_past_a_bound_names_its_own_field(
    extra: dict[str, Any], field: str
) -> None:
    status, reply, published = await post("/v1/responses", {"model": "gpt-4o-mini", **extra})
    assert status == 400, reply
    assert reply["error"]["param"] == field and reply["error"]["message"].startswith(field)
    assert not published


async def test_a_responses_request_for_a_model_it_may_not_use_is_refused_first() -> None:
    """The model is checked before the items are read (a body past the edge's own)."""
    body = {"model": "no-such-model", "input": [{"role": "user", "content": "a"}] * MAX_TURNS}
    status, reply, _ = await post("/v1/responses", body)
    assert status == 404 and reply["error"]["param"] == "model"


async def test_a_message_batch_request_past_a_bound_errors_alone() -> None:
    from tests.unit.test_batch_quota import Bus, MemoryStore

    app, _ = gateway_app()
    bus = app.state.relay.bus = Bus()
    app.state.batches = store = MemoryStore()
    store.record_many = recorded = _Recorder()  # type: ignore[method-assign]
    params = {"model": "claude-haiku", "max_tokens": 5, "messages": [TURN]}
    huge = {**params, "messages": [TURN] * (MAX_TURNS + 1)}
    asked = {
        "requests": [{"custom_id": "ok", "params": params}, {"custom_id": "huge", "params": huge}]
    }
    async with client(app) as http:
        reply = await http.post("/v1/messages/batches", json=asked)
    assert reply.status_code == 200, reply.json()
    assert [env.correlation_id.rsplit("/", 1)[1] for env in bus.published] == ["0"]
    assert list(recorded.lines) == [1]
    line = recorded.lines[1]
    assert line.response.status_code == 400
    assert line.response.body["error"]["message"].startswith("messages: at most")


async def test_a_message_batch_request_within_the_bounds_is_never_refused_as_translated() -> None:
    """Translation makes each tool result a message of its own: a batch line of 5 001
    Anthropic turns becomes 12 501 chat messages, and is still sent, never refused for a
    count the client did not send."""
    from tests.unit.test_batch_quota import Bus, MemoryStore

    app, _ = gateway_app()
    bus = app.state.relay.bus = Bus()
    app.state.batches = store = MemoryStore()
    store.record_many = recorded = _Recorder()  # type: ignore[method-assign]
    rounds = [m for _ in range(2500) for m in _tool_round(4)]  # 5 001 turns, 12 501 translated
    params = {"model": "claude-haiku", "max_tokens": 5, "messages": [TURN, *rounds]}
    assert len(params["messages"]) <= MAX_TURNS
    asked = {"requests": [{"custom_id": "long", "params": params}]}
    async with client(app) as http:
        reply = await http.post("/v1/messages/batches", json=asked)
    assert reply.status_code == 200, reply.json()
    assert len(bus.published) == 1 and not recorded.lines


class _Recorder:
    def __init__(self) -> None:
        self.lines: dict[int, Any] = {}

    async def __call__(self, batch_id: str, lines: dict[int, Any]) -> bool:
        self.lines.update(lines)
        return bool(lines)


def _tool_round(n: int, content: Any = "ok") -> list[dict[str, Any]]:
    """One Anthropic round of ``n`` parallel tool calls, and their results."""
    ids = [f"toolu_{n}_{k}" for k in range(n)]
    calls = [{"type": "tool_use", "id": x, "name": "f", "input": {}} for x in ids]
    results = [{"type": "tool_result", "tool_use_id": x, "content": content} for x in ids]
    return [{"role": "assistant", "content": calls}, {"role": "user", "content": results}]


_TEXT = {"type": "text", "text": "a"}


@pytest.mark.parametrize(
    "result",
    [
        [_TEXT] * (MAX_ITEMS + 1),  # a tool result's blocks
        [{"type": "search_result", "source": "u", "title": "t", "content": [_TEXT] * MAX_ITEMS}],
        [  # a document's own blocks, in a tool result
            {
                "type": "document",
                "source": {"type": "content", "content": [_TEXT] * MAX_ITEMS},
            }
        ],
    ],
)
def test_blocks_nested_in_an_anthropic_tool_result_are_counted_before_translation(
    monkeypatch: pytest.MonkeyPatch, result: list[Any]
) -> None:
    """A tool result's blocks (and a document's or search result's inside it) are
    walked on the event loop as they are translated: one turn of 200 000 of them held it
    for 0.4 s.  They count with the rest."""
    from gateway import anthropic_routes
    from schemas.errors import BadRequest

    def translate(body: object) -> object:
        raise AssertionError("translated")

    monkeypatch.setattr(anthropic_routes, "messages_request_to_openai", translate)
    turns = [{"role": "user", "content": "hi"}, *_tool_round(1, result)]
    body = {"model": "claude-haiku", "max_tokens": 5, "messages": turns}
    with pytest.raises(BadRequest) as refused:
        anthropic_routes.neutral_request(body)
    assert refused.value.param == "messages"
    assert f"at most {MAX_ITEMS} items" in str(refused.value)


async def test_a_responses_reasoning_summary_counts_with_the_rest() -> None:
    summary = [{"type": "summary_text", "text": "a"}] * (MAX_ITEMS + 1)
    items = [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": summary},
        {"role": "user", "content": "go on"},
    ]
    status, reply, published = await post("/v1/responses", {"model": "gpt-4o-mini", "input": items})
    assert status == 400, reply
    assert (
        reply["error"]["param"] == "input" and f"at most {MAX_ITEMS}" in reply["error"]["message"]
    )
    assert not published


def test_the_count_stops_once_past_the_bound() -> None:
    """A body far past it costs no more to refuse than one just past it: the count
    stops there.  (Counted whole, this one's 10 000 turns of a million blocks each would
    take hours.)"""
    from gateway.bodies import turns_problem

    results = [{"type": "tool_result", "tool_use_id": "t", "content": [_TEXT] * 1000}] * 1000
    turns = [{"role": "user", "content": results}] * MAX_TURNS
    started = time.perf_counter()
    problem = turns_problem(turns) or ""
    assert time.perf_counter() - started < 0.5
    assert f"at most {MAX_ITEMS} items" in problem and "got at least" in problem


async def test_an_anthropic_body_within_the_bounds_is_served_however_its_translation_grows() -> (
    None
):
    """Each of an Anthropic turn's tool results becomes a chat message of its own: 4 001
    turns (2 000 rounds of five parallel calls) are 12 001 chat messages, more than a
    request may hold.  The client sent 4 001, counted as it sent them: served."""
    turns = [{"role": "user", "content": "go"}]
    for _ in range(2_000):
        turns += _tool_round(5)
    body = {"model": "claude-haiku", "max_tokens": 5, "messages": turns}
    status, reply, published = await post("/v1/messages", body)
    assert status == 200, reply
    assert len(published[0].body["messages"]) == 12_001
