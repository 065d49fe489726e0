"""Bad input at the gateway gets a clear 400 in the vendor's error shape (never a 500),
and a stream that waits long for its first chunk starts anyway so keep-alives can flow.
The real app in-process, on a bus that answers from a script (tests.support.gateway)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

import gateway.relay
import gateway.sse
from schemas.envelope import ReplyEvent, RequestEnvelope
from tests.support.gateway import AUTH, answer_hello, client, gateway_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "max_tokens": 16}
TOOL_USE = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}


async def post(path: str, body: Any, **headers: str) -> tuple[int, Any]:
    app, _ = gateway_app()
    async with client(app) as http:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = await http.post(
            path, content=content, headers={"content-type": "application/json", **headers}
        )
    return reply.status_code, reply.json()


def refusing(**error: Any) -> Any:
    """A worker that answers every request with this error."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        return [(0.0, ReplyEvent(correlation_id=env.correlation_id, kind="error", error=error))]

    return script


def deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    top = node
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return top


@pytest.mark.parametrize(
    ("header", "value", "says"),
    [
        ("x-relay-timeout", "nan", "x-relay-timeout"),
        ("x-relay-timeout", "inf", "x-relay-timeout"),
        ("x-relay-timeout", "1e17", "not between 0 and 3600"),
        ("x-relay-timeout", "-5", "not between"),
        ("x-relay-timeout", "0", "more than 0"),
        ("x-relay-timeout", "soon", "x-relay-timeout"),
        ("x-relay-cache-ttl", "99999999999999999999", "not between 0 and 2592000"),
        ("x-relay-cache-ttl", "1" * 400, "not between 0 and 2592000"),  # past a float
        ("x-relay-cache-ttl", "1" * 5000, "x-relay-cache-ttl"),  # past int()'s digit limit
        ("x-relay-timeout", "1" * 400, "not between 0 and 3600"),
        ("x-relay-cache-ttl", "-1", "not between"),
        ("x-relay-cache-ttl", "forever", "neither seconds nor one of"),
        ("x-relay-cache", "bypas", "'bypas' is not one of use, bypass, refresh"),
        ("x-relay-priority", "urgent", "'urgent' is not one of realtime, batch, background"),
    ],
)
async def test_a_header_that_makes_no_sense_is_a_400_naming_it(header, value, says):
    status, body = await post("/v1/chat/completions", CHAT, **{header: value})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert says in body["error"]["message"] and header in body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({**CHAT, "response_format": {"type": "json_schema", "json_schema": deep(300)}},
         "cannot be relayed"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "cannot be relayed"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], '
         b'"temperature": NaN}', "NaN and Infinity"),
        ({**CHAT, "stop": 5}, "stop:"),
        ({**CHAT, "tools": ["x"]}, "tools.0:"),
        ({**CHAT, "response_format": "json"}, "response_format:"),
        ({**CHAT, "stream": "yes"}, "stream:"),
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
    ],
)  # fmt: skip
async def test_a_body_no_vendor_could_take_is_a_400_not_a_500(body, says):
    status, reply = await post("/v1/chat/completions", body)
    assert status == 400, reply
    assert says in reply["error"]["message"]


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function", "function": "f"}]}, "tools.0.function"),
        ({"tools": [{"type": "function"}]}, "tools.0.function"),
        ({"tools": [{"type": "function", "function": {"description": "d"}}]},
         "tools.0.function.name"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "custom", "custom": {"name": 5}}]}, "tools.0.custom.name"),
        ({"functions": [{"description": "no name"}]}, "functions.0.name"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": None, "tool_calls": 5}]},
         "messages.1.tool_calls"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": None, "tool_calls": ["c1"]}]},
         "messages.1.tool_calls.0"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": None,
                        "tool_calls": [CALL, {**CALL, "function": {"arguments": "{}"}}]}]},
         "messages.1.tool_calls.1.function.name"),
    ],
)  # fmt: skip
async def test_malformed_tools_and_tool_calls_are_a_400_naming_the_field(change, param):
    status, reply = await post("/v1/chat/completions", {**CHAT, **change})
    assert status == 400, reply
    assert reply["error"]["param"] == param and reply["error"]["message"].startswith(param)


async def test_well_formed_tools_and_calls_pass_and_a_null_tool_calls_too():
    tools = [
        {"type": "function", "function": {"name": "f"}},
        {"type": "custom", "custom": {"name": "g"}},
    ]
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "tool_calls": None},  # the openai SDK's echo
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
    ]
    status, reply = await post(
        "/v1/chat/completions", {**CHAT, "tools": tools, "messages": messages}
    )
    assert status == 200, reply


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
         "malformed Messages request"),
        ({"tools": 5}, "tools: must be a list"),
        ({"messages": [{"role": "assistant", "content": [{"type": "text", "text": 5}]}]},
         "messages.0.content.0.text: must be a string"),
        ({"stream": "false"}, "stream: must be true or false"),
        ({"top_k": "many"}, "top_k: must be a number"),
        ({"metadata": {"user_id": 12345}}, "metadata.user_id: must be a string"),
        ({"metadata": {"user_id": ["u"]}}, "metadata.user_id: must be a string"),
        ({"metadata": {"user_id": deep(300)}}, "metadata.user_id: must be a string"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": [TOOL_USE]},
                       {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                     "content": {"type": "text", "text": "42"}}]}]},
         "messages.2.content.0.content: must be a string or a list of content blocks"),
    ],
)  # fmt: skip
async def test_a_malformed_messages_request_is_an_anthropic_400(change, says):
    status, reply = await post("/v1/messages", {**MESSAGES, **change})
    assert status == 400, reply
    assert reply["type"] == "error" and reply["error"]["type"] == "invalid_request_error"
    assert says in reply["error"]["message"]


NULL_TEXT = {"type": "text", "text": None}


def user_says(*parts: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(parts)}]}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (user_says(NULL_TEXT), "messages.0.content.0.text"),
        (user_says({"type": "text", "text": "ok"}, {"type": "text"}), "messages.0.content.1.text"),
        (user_says({"type": "text", "text": 5}), "messages.0.content.0.text"),
        ({"messages": [{"role": "system", "content": [NULL_TEXT]},
                       {"role": "user", "content": "hi"}]}, "messages.0.content.0.text"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": [NULL_TEXT]}]},
         "messages.1.content.0.text"),
        (user_says(None), "messages.0.content.0"),
    ],
)  # fmt: skip
async def test_a_chat_text_part_that_is_no_string_is_a_400_naming_it(change, param):
    """Not a worker's vague TypeError once a vendor's translation meets it."""
    app, bus = gateway_app()
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json={**CHAT, **change})
    assert reply.status_code == 400, reply.json()
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == param and error["message"].startswith(f"{param}: must be")
    assert bus.published == [], "nothing reached a worker"


TOOL_RESULT = {"type": "tool_result", "tool_use_id": "t1"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (user_says(NULL_TEXT), "messages.0.content.0.text"),
        (user_says({"type": "text", "text": "ok"}, {"type": "text"}), "messages.0.content.1.text"),
        ({"system": [NULL_TEXT]}, "system.0.text"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": [NULL_TEXT]}]},
         "messages.1.content.0.text"),
        ({"messages": [{"role": "user", "content": "q"},
                       {"role": "assistant", "content": [TOOL_USE]},
                       {"role": "user", "content": [{**TOOL_RESULT, "content": [NULL_TEXT]}]}]},
         "messages.2.content.0.content.0.text"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_an_anthropic_text_block_that_is_no_string_is_a_400_naming_it(change, field, path):
    app, bus = gateway_app()
    async with client(app) as http:
        reply = await http.post(path, json={**MESSAGES, **change})
    assert reply.status_code == 400, reply.json()
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"] == f"{field}: must be a string", body
    assert bus.published == [], "nothing reached a worker"


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"role": "user", "content": [{"type": "input_text", "text": None}]}],
         "input.0.content.0.text"),
        ([{"type": "message", "role": "assistant",
           "content": [{"type": "output_text", "text": None}]}], "input.0.content.0.text"),
        ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
          {"type": "function_call_output", "call_id": "c",
           "output": [{"type": "input_text", "text": None}]}], "input.1.output.0.text"),
    ],
)  # fmt: skip
async def test_a_responses_text_part_that_is_no_string_is_a_400_naming_it(items, param):
    app, bus = gateway_app()
    async with client(app) as http:
        reply = await http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": items})
    assert reply.status_code == 400, reply.json()
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert bus.published == [], "nothing reached a worker"


async def test_an_alias_asked_for_what_it_does_not_serve_is_refused_before_any_vendor():
    app, bus = gateway_app()
    async with client(app) as http:
        embed = await http.post("/v1/embeddings", json={"model": "gpt-4o-mini", "input": "x"})
        chat = await http.post("/v1/messages", json={**MESSAGES, "model": "text-embedding-3-small"})
    assert embed.status_code == 400 and embed.json()["error"]["param"] == "model"
    assert "is a chat model and does not serve embeddings" in embed.json()["error"]["message"]
    assert chat.status_code == 400 and chat.json()["type"] == "error"
    assert bus.published == [], "nothing reached a worker"


async def raw_asgi(app: Any, body: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    """Drive the ASGI app directly, timing each message it sends (httpx would buffer)."""
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in AUTH.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("relay", 80), "state": {},
    }  # fmt: skip
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()
        return {}

    start, seen = time.monotonic(), []

    async def send(message: dict[str, Any]) -> None:
        seen.append((time.monotonic() - start, message))

    await app(scope, receive, send)
    return seen


async def test_a_stream_slow_to_start_starts_anyway_and_keeps_the_line_alive(monkeypatch):
    monkeypatch.setattr(gateway.relay, "STREAM_START_S", 0.1)
    monkeypatch.setattr(gateway.sse.openai_sse, "__defaults__", (0.05,))

    def slow(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        return [(0.6 if i == 0 else 0.0, event) for i, (_, event) in enumerate(answer_hello(env))]

    app, _ = gateway_app(slow)
    seen = await raw_asgi(app, {**CHAT, "stream": True})
    start = next(t for t, m in seen if m["type"] == "http.response.start")
    bodies = [(t, m.get("body", b"")) for t, m in seen if m["type"] == "http.response.body"]
    first_data = next(t for t, b in bodies if b.startswith(b"data: {"))
    assert start < 0.5 <= first_data, "the response started before the first chunk came"
    assert any(b == b": keepalive\n\n" and t < first_data for t, b in bodies)
    assert bodies[-1][1] == b"data: [DONE]\n\n" or bodies[-2][1] == b"data: [DONE]\n\n"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_degraded_stream_slow_to_start_still_says_so_in_its_headers(monkeypatch, path):
    """The worker's notice (a chunk with no body) comes ahead of a slow first token, so
    the headers sent before that token carry x-relay-degraded."""
    monkeypatch.setattr(gateway.relay, "STREAM_START_S", 0.1)

    def degraded_slow(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        notice = ReplyEvent(
            correlation_id=env.correlation_id, kind="chunk", degraded="budget_80pct"
        )
        answer = [(0.3 if i == 0 else 0.0, e) for i, (_, e) in enumerate(answer_hello(env))]
        return [(0.0, notice), *answer]

    app, _ = gateway_app(degraded_slow)
    async with client(app) as http:
        reply = await http.post(path, json={**MESSAGES, "stream": True})
    assert reply.status_code == 200
    assert reply.headers["x-relay-degraded"] == "budget_80pct"
    assert "Hello" in reply.text, "the notice is not part of the answer; the answer is whole"


async def test_a_stream_refused_at_once_still_gets_its_real_status():
    app, _ = gateway_app(refusing(code="rate_limited", message="slow down", retry_after=3))
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert reply.status_code == 429 and reply.headers["retry-after"] == "3"
    assert reply.json()["error"]["message"] == "slow down"


async def test_a_vendors_429_that_named_no_wait_still_tells_the_client_one():
    app, _ = gateway_app(refusing(code="vendor_rate_limited", message="slow down"))
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 429 and reply.headers["retry-after"] == "1"


async def test_a_count_with_no_counting_vendor_available_is_estimated_not_refused():
    app, bus = gateway_app(refusing(code="no_healthy_vendor", message="every vendor is failing"))
    async with client(app) as http:
        reply = await http.post(
            "/v1/messages/count_tokens",
            json={
                "model": "claude-haiku",
                "messages": [{"role": "user", "content": "hello there"}],
            },
        )
    assert reply.status_code == 200 and reply.json()["input_tokens"] > 0
    assert [e.endpoint for e in bus.published] == ["count_tokens"], "the vendor was asked first"


async def test_an_estimated_count_weighs_an_image_as_an_image_not_as_its_base64():
    app, _ = gateway_app(refusing(code="no_healthy_vendor", message="every vendor is failing"))
    picture = {"type": "base64", "media_type": "image/png", "data": "A" * 40_000}
    content = [{"type": "image", "source": picture}, {"type": "text", "text": "what is it?"}]
    async with client(app) as http:
        reply = await http.post(
            "/v1/messages/count_tokens",
            json={"model": "claude-haiku", "messages": [{"role": "user", "content": content}]},
        )
    assert reply.status_code == 200 and 1_600 < reply.json()["input_tokens"] < 2_000


@pytest.mark.parametrize("prompt", [[15339, 1917], [[15339], [1917, 11]], ["a", "b"], "a"])
async def test_completions_take_every_prompt_form_openai_takes(prompt: Any) -> None:
    """Text, a list of texts, token ids, or a list of token-id lists."""
    seen: list[RequestEnvelope] = []

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        seen.append(env)
        return answer_hello(env)

    app, _ = gateway_app(script)
    async with client(app) as http:
        reply = await http.post(
            "/v1/completions",
            json={"model": "gpt-3.5-turbo-instruct", "prompt": prompt},
            headers=AUTH,
        )
    assert reply.status_code == 200, reply.text
    assert seen[0].body["prompt"] == prompt


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "a"}),
    ],
)
async def test_stream_null_asks_for_a_whole_answer_as_openai_takes_it(path, body) -> None:
    """The ``openai`` SDK sends ``"stream": null`` for ``stream=None``."""
    app, bus = gateway_app()
    async with client(app) as http:
        reply = await http.post(path, json={**body, "stream": None}, headers=AUTH)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert not bus.published[0].stream and not bus.published[0].body.get("stream")


async def test_streamed_legacy_completions_are_refused_saying_so() -> None:
    status, reply = await post(
        "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "a", "stream": True}
    )
    assert status == 400 and reply["error"]["param"] == "stream"
    assert "streaming of legacy completions is not supported" in reply["error"]["message"]


@pytest.mark.parametrize("code", ["no_healthy_vendor", "vendor_overloaded"])
async def test_no_vendor_is_an_openai_503_and_anthropic_s_own_529_overloaded(code: str):
    """Anthropic says overloaded with a 529, which its SDK raises as OverloadedError;
    the relay says so when no vendor is healthy, or when the last one tried was
    overloaded itself."""
    app, _ = gateway_app(refusing(code=code, message="every vendor is failing"))
    async with client(app) as http:
        chat = await http.post("/v1/chat/completions", json=CHAT)
        messages = await http.post("/v1/messages", json=MESSAGES)
        streamed = await http.post("/v1/messages", json={**MESSAGES, "stream": True})
    assert chat.status_code == 503 and chat.json()["error"]["type"] == "overloaded_error"
    for reply in (messages, streamed):
        assert reply.status_code == 529
        assert reply.json()["error"] == {
            "type": "overloaded_error",
            "message": "every vendor is failing",
        }


async def test_anthropic_beta_features_ride_in_the_body_for_anthropic_vendors_only():
    from schemas.formats.anthropic import without_cache_control

    app, bus = gateway_app()
    beta = {"anthropic-beta": "interleaved-thinking-2025-05-14, token-efficient-tools-2025-02-19"}
    async with client(app) as http:
        reply = await http.post("/v1/messages", json=MESSAGES, headers=beta)
        refused = await http.post("/v1/messages", json=MESSAGES, headers={"anthropic-beta": "a b"})
    assert reply.status_code == 200
    body = bus.published[0].body
    assert body["anthropic_beta"] == [
        "interleaved-thinking-2025-05-14",
        "token-efficient-tools-2025-02-19",
    ]
    assert "anthropic_beta" not in without_cache_control(body), "OpenAI-format vendors go without"
    assert refused.status_code == 400 and "anthropic-beta" in refused.json()["error"]["message"]


async def test_a_client_leaving_mid_upload_is_a_quiet_499_not_a_500() -> None:
    from gateway import metrics

    app, _ = gateway_app()
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + b"x" * 2000
    )
    headers = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
    headers += [(b"content-length", b"500000")]
    headers += [(k.encode(), v.encode()) for k, v in AUTH.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/files", "raw_path": b"/v1/files", "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("relay", 80), "state": {},
    }  # fmt: skip
    messages = [{"type": "http.request", "body": part, "more_body": True}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    internal = metrics.ERRORS.labels("internal_error", "500", "realtime")._value.get()
    await app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert metrics.ERRORS.labels("internal_error", "500", "realtime")._value.get() == internal


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/responses", b'{"model": "gpt-4o-mini", "input": "hi", "include": true}'),
        ("/v1/responses", b'{"model": "gpt-4o-mini", "input": "hi", "include": -1}'),
        (
            "/v1/messages",
            b'{"model": "claude-haiku", "max_tokens": 5, "messages": [{"role": "assistant", '
            b'"content": [{"type": "tool_use", "id": "t", "name": "f", "input": '
            + b'{"a":' * 1010 + b"1" + b"}" * 1010
            + b'}]}, {"role": "user", "content": "hi"}]}',
        ),
    ],
)  # fmt: skip
async def test_odd_shapes_deep_in_a_body_are_a_400_never_a_500(path: str, raw: bytes) -> None:
    status, body = await post(path, raw)
    assert status == 400, body


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        (b'{"k": "\\ud800"}', "metadata: keys and values must be valid Unicode text"),
        (b'{"k": "' + b"v" * 513 + b'"}', "metadata: keys may have up to 64 characters"),
    ],
)
async def test_batch_metadata_that_cannot_be_kept_is_a_400(metadata: bytes, says: str) -> None:
    body = (
        b'{"input_file_id": "file-1", "endpoint": "/v1/chat/completions", '
        b'"completion_window": "24h", "metadata": ' + metadata + b"}"
    )
    status, reply = await post("/v1/batches", body)
    assert status == 400 and reply["error"]["message"].startswith(says), reply
    assert reply["error"]["param"] == "metadata"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": [1]}, "top_p"),
        ({"user": 5}, "user"),
        (
            {
                "parallel_tool_calls": "yes",
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            },
            "parallel_tool_calls",
        ),
    ],
)
async def test_a_responses_request_is_held_to_chat_s_checks(extra: Any, param: str) -> None:
    """Never sent on to a worker with a knob of the wrong type (chat's 400, same words)."""
    status, reply = await post("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", **extra})
    assert status == 400 and reply["error"]["param"] == param, reply
    assert reply["error"]["message"].startswith(f"{param}: ")
    chat = {**CHAT, **extra}
    if "tools" in extra:
        chat["tools"] = [{"type": "function", "function": {"name": "f"}}]
    status, reply = await post("/v1/chat/completions", chat)
    assert status == 400 and reply["error"]["param"] == param, reply


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 5}, "max_tokens"),
        ({"seed": 7}, "seed"),
        ({"stop": ["\n"]}, "stop"),
        ({"frequency_penalty": 2}, "frequency_penalty"),
        ({"n": 3}, "n"),
    ],
)
async def test_a_responses_request_with_a_field_the_api_lacks_is_refused(
    extra: Any, param: str
) -> None:
    """As OpenAI refuses it (unknown_parameter, naming the field), rather than the request
    run without it (no length limit for a client that used chat's max_tokens)."""
    app, bus = gateway_app()
    async with client(app) as http:
        body = {"model": "gpt-4o-mini", "input": "hi", **extra}
        reply = await http.post("/v1/responses", json=body)
    error = reply.json()["error"]
    assert reply.status_code == 400 and not bus.published
    assert (error["param"], error["code"]) == (param, "unknown_parameter")
    assert error["type"] == "invalid_request_error"


async def test_a_responses_request_asking_for_moderation_is_refused() -> None:
    status, reply = await post(
        "/v1/responses",
        {"model": "gpt-4o-mini", "input": "hi", "moderation": {"model": "omni-moderation"}},
    )
    assert status == 400 and reply["error"]["param"] == "moderation"


PAD = "x" * 300_000  # past the edge's own parser: FastAPI's keeps integers past 64 bits


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": '
         b'[{"role": "user", "content": "hi"}], "user": "\\ud800"}'),
        ("/v1/chat/completions", {**CHAT, "metadata": deep(300)}),
        ("/v1/chat/completions", {**CHAT, "pad": PAD, "metadata": {"a": 2**64}}),
        ("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "x", '
         b'"user": "\\ud800"}'),
    ],
)  # fmt: skip
async def test_what_the_topic_cannot_carry_outside_the_cache_key_is_a_400(path, body):
    """``user``, ``metadata`` and the like are not hashed into the cache key, so only the
    envelope's own encoding meets them: a 400 there, in the route's own error shape."""
    status, reply = await post(path, body)
    assert status == 400, reply
    error = reply["error"]
    assert "cannot be relayed" in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"tools": [{"name": "f", "input_schema": deep(300)}]}, 400, "cannot be counted"),
        ({"system": [{"type": "text", "text": "s", "cache_control": {"type": ["x"]}}]}, 200, ""),
        ({"model": "text-embedding-3-small"}, 400, "does not serve count_tokens"),
    ],
)  # fmt: skip
async def test_an_estimated_count_takes_odd_shapes_and_refuses_what_cannot_be_counted(
    change, status, says
):
    """gpt-4o-mini has no vendor that counts tokens: the gateway estimates, and must
    neither fail on what it walks (a list where a type name belongs) nor count for a
    model that could never answer the messages."""
    got, reply = await post("/v1/messages/count_tokens", {**MESSAGES, **change})
    assert got == status, reply
    if status == 200:
        assert reply["input_tokens"] > 0
    else:
        assert reply["type"] == "error" and says in reply["error"]["message"]


async def test_a_trailing_slash_is_an_openai_404_not_a_bodiless_redirect():
    status, reply = await post("/v1/chat/completions/", CHAT)
    assert status == 404
    assert reply["error"]["message"].startswith("Invalid URL")


async def test_the_anthropic_sdks_files_api_hears_it_is_not_served() -> None:
    """`client.beta.files` asks /v1/files too: an Anthropic 404, not OpenAI's file list."""
    app, _ = gateway_app()
    anthropic = {"anthropic-version": "2023-06-01", "anthropic-beta": "files-api-2025-04-14"}
    async with client(app) as http:
        listed = await http.get("/v1/files", headers=anthropic)
        uploaded = await http.post("/v1/files", headers=anthropic, files={"file": b"x"})
    for resp in (listed, uploaded):
        assert resp.status_code == 404
        assert resp.json()["type"] == "error" and "Files API" in resp.json()["error"]["message"]


async def test_openai_s_batch_path_asked_with_anthropic_s_header_hears_where_anthropic_s_are():
    app, _ = gateway_app()
    async with client(app) as http:
        resp = await http.get("/v1/batches", headers={"anthropic-version": "2023-06-01"})
    assert resp.status_code == 404
    assert resp.json()["type"] == "error"  # Anthropic's body, as the README says
    assert "/v1/messages/batches" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "field", "value", "says"),
    [
        ("/v1/embeddings", "input", "", "must not be empty"),
        ("/v1/embeddings", "input", [], "must not be empty"),
        ("/v1/embeddings", "input", ["a", ""], "must not be empty"),
        ("/v1/embeddings", "input", [[1, 2], []], "must not be empty"),
        ("/v1/embeddings", "input", ["x"] * 2049, "at most 2048 inputs"),
        ("/v1/embeddings", "input", [[1]] * 2049, "at most 2048 inputs"),
        ("/v1/completions", "prompt", [], "must not be empty"),
        ("/v1/completions", "prompt", [[5], []], "must not be empty"),
    ],
)
async def test_an_empty_input_is_a_400_naming_the_field(
    path: str, field: str, value: Any, says: str
) -> None:
    """As OpenAI: nothing to embed (or complete) is refused, not sent on as one empty
    vector or none depending on the alias's batching."""
    status, body = await post(path, {"model": "text-embedding-3-small", field: value}, **AUTH)
    assert status == 400, body
    assert body["error"]["param"] == field and says in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


async def test_one_token_array_longer_than_2048_is_one_input() -> None:
    """The 2048 limit counts inputs: one input given as 3000 token ids is one (it passes
    the input checks, and the unknown model is what is said)."""
    status, body = await post(
        "/v1/embeddings", {"model": "nope", "input": list(range(3000))}, **AUTH
    )
    assert status == 404 and body["error"]["param"] == "model", body
