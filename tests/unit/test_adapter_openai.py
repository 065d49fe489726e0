"""The OpenAI adapter against a MockTransport playing OpenAI: requests out, answers in."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import httpx
import pytest

from agents.adapters import (
    AnthropicAdapter,
    AzureOpenAIAdapter,
    BatchVendor,
    ChatVendor,
    EmbeddingVendor,
    OllamaAdapter,
    OpenAIAdapter,
    VendorCall,
    VendorResult,
    make_adapter,
)
from agents.adapters.base import CallsRefused
from schemas.config import VendorConfig
from schemas.errors import (
    ContentFiltered,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorNotFound,
    VendorOverloaded,
    VendorRateLimited,
    VendorRequestTooLarge,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.usage import Usage

BASE = "http://127.0.0.1:9000/v1"
KEY = "sk-test-abcdefghijklmnop"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ],
    },
]
COMPLETION = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A cat.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 2100,
        "completion_tokens": 4,
        "total_tokens": 2104,
        "prompt_tokens_details": {"cached_tokens": 2048, "audio_tokens": 0},
    },
}


def adapter_for(handler, base: str = BASE) -> OpenAIAdapter:
    config = VendorConfig(kind="openai", base_url=base, timeout_s=30)
    return OpenAIAdapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def call(body: dict | None = None, key: str = KEY) -> VendorCall:
    body = body or {"model": "relay-alias", "messages": MESSAGES, "stream": True}
    return VendorCall(model="gpt-4o-mini", body=body, api_key=key, timeout_s=12)


def sse(*events: dict | str) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def pieces(data: bytes, size: int = 7):
    """Stream bytes in small pieces that cut lines in half, as networks do."""

    async def gen():
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return gen()


async def collect(stream) -> list:
    return [item async for item in stream]


async def test_chat_sends_vendor_model_with_bearer_and_reads_cached_usage():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    result = await adapter_for(handler).chat(call())

    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(request.content) == {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert request.extensions["timeout"]["read"] == 12
    assert result == VendorResult(
        COMPLETION,
        Usage(input_tokens=2100, output_tokens=4, cache_read_tokens=2048),
    )


def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> dict:
    """An OpenAI stream chunk; ``delta=None`` makes the choices-less usage chunk."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    return {**head, "choices": choices, "usage": usage}


def tool_delta(**fields) -> dict:
    return {"tool_calls": [{"index": 0, **fields}]}


STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Checking"}),
    chunk(tool_delta(id="call_w", type="function", function={"name": "weather", "arguments": ""})),
    chunk(tool_delta(function={"arguments": '{"city"'})),
    chunk(tool_delta(function={"arguments": ': "Oslo"}'})),
    chunk({}, "tool_calls"),
    chunk(
        None,
        usage={
            "prompt_tokens": 1500,
            "completion_tokens": 17,
            "total_tokens": 1517,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    ),
]


async def test_stream_asks_for_usage_and_yields_chunks_then_usage():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = b": keep-alive\n\n" + sse(*STREAM, "[DONE]")
        return httpx.Response(
            200, content=pieces(body), headers={"content-type": "text/event-stream"}
        )

    items = await collect(adapter_for(handler).stream(call()))

    sent = json.loads(seen[0].content)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "gpt-4o-mini"
    *chunks, usage = items
    assert usage == Usage(input_tokens=1500, output_tokens=17, cache_read_tokens=1024)
    assert chunks == [{k: v for k, v in c.items() if k != "usage"} for c in STREAM[:-1]]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
async def test_a_line_separator_inside_a_delta_does_not_cut_the_event(separator):
    """Servers write U+2028/U+2029/U+0085 raw inside JSON strings (vLLM, Go's encoder);
    an SSE line ends at LF or CRLF only, so the delta arrives whole."""
    said = chunk({"content": f"a{separator}b"})
    body = "".join(
        f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in [said, "[DONE]"]
    ).replace('"[DONE]"', "[DONE]")
    items = await collect(
        adapter_for(lambda r: httpx.Response(200, content=pieces(body.encode(), 3))).stream(call())
    )
    assert items[0]["choices"][0]["delta"]["content"] == f"a{separator}b"


async def test_stream_skips_azure_style_filter_chunk_and_survives_missing_usage():
    filter_chunk = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(filter_chunk, STREAM[1], STREAM[5], "[DONE]"))

    items = await collect(adapter_for(handler).stream(call()))
    assert [i["choices"][0]["delta"] for i in items[:-1]] == [{"content": "Checking"}, {}]
    usage = items[-1]
    assert usage.input_tokens > 0 and usage.output_tokens > 0, "estimated, never free"


async def test_what_a_left_out_chunk_says_of_its_own_rides_on_the_next_chunk():
    """A chunk that answers nothing is left out, but not a vendor's own field on it: the
    next chunk carries it (never over that chunk's own say, nor with the left-out one's
    blank head).  The closing usage chunk is the stream's Usage, as ever."""
    opening = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
               "verdict": {"ok": True}, "note": "a", "blank": None}  # fmt: skip
    between = {**STREAM[0], "choices": [], "note": "b", "extra": [1]}
    own = {**STREAM[1], "note": "c"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=sse(opening, STREAM[0], between, own, *STREAM[5:], "[DONE]")
        )

    *chunks, usage = await collect(adapter_for(handler).stream(call()))
    assert usage == Usage(input_tokens=1500, output_tokens=17, cache_read_tokens=1024)
    plain = [
        {k: v for k, v in c.items() if k != "usage"} for c in (STREAM[0], STREAM[1], STREAM[5])
    ]
    assert chunks == [
        plain[0] | {"verdict": {"ok": True}, "note": "a"},
        plain[1] | {"note": "c", "extra": [1]},
        plain[2],
    ]


async def test_a_stream_cut_off_before_done_is_a_vendor_failure_not_an_answer():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(STREAM[0], STREAM[1]))

    with pytest.raises(VendorUnavailable, match="before \\[DONE\\]"):
        await collect(adapter_for(handler).stream(call()))


async def test_stream_error_event_after_200_raises():
    error = {"error": {"message": "The server had an error", "type": "server_error"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(STREAM[0], error))

    with pytest.raises(VendorUnavailable, match="The server had an error"):
        await collect(adapter_for(handler).stream(call()))


async def test_stream_connection_dropped_mid_answer_is_vendor_unavailable():
    async def broken():
        yield sse(STREAM[0])
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=broken())

    items: list = []
    with pytest.raises(VendorUnavailable, match="connection to the vendor failed"):
        async for item in adapter_for(handler).stream(call()):
            items.append(item)
    assert len(items) == 1


async def test_stream_error_status_raises_before_any_chunk():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json={"error": {"message": "Rate limit reached", "type": "requests"}},
            headers={"retry-after": "7"},
        )

    with pytest.raises(VendorRateLimited) as err:
        await collect(adapter_for(handler).stream(call()))
    assert err.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, VendorBadRequest),
        (404, VendorNotFound),
        (413, VendorRequestTooLarge),
        (422, VendorBadRequest),
        (401, VendorAuthFailed),
        (403, VendorAuthFailed),
        (408, VendorUnavailable),
        (409, VendorUnavailable),
        (500, VendorUnavailable),
        (503, VendorOverloaded),
        (529, VendorOverloaded),
        (429, VendorRateLimited),
    ],
)
async def test_error_statuses_map_to_the_error_tree(status, cls):
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": f"vendor says {status}", "type": "x", "code": None}}
        return httpx.Response(status, json=body)

    with pytest.raises(cls) as err:
        await adapter_for(handler).chat(call())
    assert type(err.value) is cls
    assert err.value.message == f"openai: HTTP {status}: vendor says {status}"


async def test_error_message_never_carries_the_api_key():
    def handler(request: httpx.Request) -> httpx.Response:
        message = f"Incorrect API key provided: {KEY}. You can find your API key at ..."
        return httpx.Response(401, json={"error": {"message": message, "code": "invalid_api_key"}})

    with pytest.raises(VendorAuthFailed) as err:
        await adapter_for(handler).chat(call())
    assert KEY not in str(err.value)
    assert "[redacted]" in err.value.message


async def test_a_key_where_a_long_message_is_cut_is_not_half_shown():
    def handler(request: httpx.Request) -> httpx.Response:
        message = "x" * 490 + f" {KEY} and more"
        return httpx.Response(401, json={"error": {"message": message}})

    with pytest.raises(VendorAuthFailed) as err:
        await adapter_for(handler).chat(call())
    assert "sk-test" not in err.value.message, "no part of the key either"


async def test_non_json_error_body_is_quoted():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>Bad gateway</html>")

    with pytest.raises(VendorUnavailable, match="HTTP 502: <html>Bad gateway</html>"):
        await adapter_for(handler).chat(call())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "20"}, 20.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
        ({}, None),
        ({"retry-after": "soon"}, None),
        # No Retry-After: the reset of the limit that ran out (OpenAI's Go durations)...
        (
            {
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
                "x-ratelimit-remaining-requests": "99",
                "x-ratelimit-reset-requests": "120ms",
            },
            360.0,
        ),
        # ...and none when no limit says it ran out (the health table's backoff then).
        ({"x-ratelimit-reset-requests": "12ms", "x-ratelimit-reset-tokens": "1m30.5s"}, None),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "1e12"}, 3600.0),  # never a wait of years
        ({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}, 3600.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "nan"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60"}, 60.0),
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "99h"}, 3600.0),
        ({"x-ratelimit-reset-tokens": "soon"}, None),
        ({"retry-after": "2", "x-ratelimit-reset-tokens": "6m0s"}, 2.0),  # ...never over it
    ],
)
async def test_rate_limit_carries_retry_after(headers, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"message": "slow down"}}, headers=headers)

    with pytest.raises(VendorRateLimited) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retry_after == expected


async def test_rate_limit_retry_after_as_http_date():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"error": {"message": "slow"}}, headers={"retry-after": when}
        )

    with pytest.raises(VendorRateLimited) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retry_after is not None and 25 <= err.value.retry_after <= 30


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (httpx.ReadTimeout("read timed out"), "openai: vendor timed out"),
        (httpx.ConnectTimeout("connect timed out"), "openai: vendor timed out"),
        (httpx.ConnectError("refused"), "openai: could not connect to the vendor"),
        # What httpx-aiohttp leaves unmapped (the worker's client runs on aiohttp).
        (
            aiohttp.ClientResponseError(None, (), status=400, message="bad status line"),  # type: ignore[arg-type]
            "openai: connection to the vendor failed (ClientResponseError)",
        ),
    ],
)
async def test_transport_failures_are_vendor_unavailable(exc, text):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(VendorUnavailable) as err:
        await adapter_for(handler).chat(call())
    assert err.value.message == text


async def test_embed_posts_to_embeddings_and_counts_prompt_tokens():
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    body = {"model": "embed-alias", "input": ["hello world"]}
    vc = VendorCall(model="text-embedding-3-small", body=body, api_key=KEY)
    result = await adapter_for(handler).embed(vc)

    assert str(seen[0].url) == f"{BASE}/embeddings"
    assert json.loads(seen[0].content) == {
        "model": "text-embedding-3-small",
        "input": ["hello world"],
    }
    assert result == VendorResult(answer, Usage(input_tokens=5))


async def test_complete_posts_list_prompts_to_legacy_completions():
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [
            {"text": " Paris", "index": 0, "logprobs": None, "finish_reason": "stop"},
            {"text": " Rome", "index": 1, "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    body = {"prompt": ["France's capital:", "Italy's capital:"], "max_tokens": 3}
    vc = VendorCall(model="gpt-3.5-turbo-instruct", body=body, api_key=KEY)
    result = await adapter_for(handler).complete(vc)

    assert str(seen[0].url) == f"{BASE}/completions"
    assert json.loads(seen[0].content) == {**body, "model": "gpt-3.5-turbo-instruct"}
    assert result.usage == Usage(input_tokens=12, output_tokens=2)
    assert [c["text"] for c in result.body["choices"]] == [" Paris", " Rome"]


def multipart_parts(request: httpx.Request) -> dict[str, bytes]:
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    parts = {}
    for raw in request.content.split(b"--" + boundary)[1:-1]:
        head, _, data = raw.strip(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="')[1].split(b'"')[0].decode()
        parts[name] = data
    return parts


async def test_submit_batch_uploads_jsonl_then_creates_the_batch():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-in", "object": "file", "purpose": "batch"})
        return httpx.Response(
            200, json={"id": "batch_1", "object": "batch", "status": "validating"}
        )

    calls = [("r1", call()), ("r2", call({"messages": [{"role": "user", "content": "hi"}]}))]
    batch_id = await adapter_for(handler).submit_batch(calls, KEY)

    assert batch_id == "batch_1"
    upload, create = seen
    assert str(upload.url) == f"{BASE}/files"
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    parts = multipart_parts(upload)
    assert parts["purpose"] == b"batch"
    lines = [json.loads(line) for line in parts["file"].decode().splitlines()]
    assert lines == [
        {
            "custom_id": "r1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": MESSAGES},
        },
        {
            "custom_id": "r2",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        },
    ]
    assert str(create.url) == f"{BASE}/batches"
    sent = json.loads(create.content)
    nonce = sent.pop("metadata")["relay_lane_nonce"]  # the batch's own: found by it
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    assert sent == {
        "input_file_id": "file-in",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }


class Account:
    """An OpenAI account whose batch create call fails (``create``: an exception to
    raise, or a response) after making the batch or not (``made``); its batch list holds
    ``older`` batches made an hour before, under those made since, newest first."""

    def __init__(
        self,
        create,
        *,
        made: bool,
        older: int = 1,
        metadata: bool = True,
        made_id: str = "batch_made",
    ):
        self.create, self.made, self.metadata, self.made_id = create, made, metadata, made_id
        self.seen: list[httpx.Request] = []
        self.list_fails = False
        now = int(time.time())
        self.batches = [
            {"id": f"batch_old{i}", "created_at": now - 3600, "input_file_id": f"file-{i}"}
            for i in range(older)
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path, method = request.url.path, request.method
        if path.endswith("/files") and method == "POST":
            return httpx.Response(200, json={"id": "file-in", "object": "file"})
        if path.endswith("/batches") and method == "POST":
            asked = json.loads(request.content)
            if self.made:
                made = {"created_at": int(time.time()), **asked}
                if self.made_id:  # (none: a list that leaves it out)
                    made["id"] = self.made_id
                if not self.metadata:  # a server that keeps none
                    made["metadata"] = None
                self.batches.insert(0, made)
                other = {"id": "batch_later", "created_at": int(time.time()), "metadata": {}}
                self.batches.insert(0, other)  # another worker's, made since
            if isinstance(self.create, Exception):
                raise self.create
            return self.create
        if path.endswith("/batches") and method == "GET":
            if self.list_fails:
                return httpx.Response(500, json={"error": {"message": "busy"}})
            start = 0
            if after := request.url.params.get("after"):
                start = [b["id"] for b in self.batches].index(after) + 1
            limit = int(request.url.params["limit"])
            page = self.batches[start : start + limit]
            more = start + limit < len(self.batches)
            return httpx.Response(200, json={"object": "list", "data": page, "has_more": more})
        return httpx.Response(200, json={"id": path.rpartition("/")[2], "deleted": True})

    def asked(self, method: str, suffix: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.method == method and r.url.path.endswith(suffix)]


def looking_adapter(account: Account) -> OpenAIAdapter:
    adapter = adapter_for(account)
    adapter.lookup_waits_s = (0.0, 0.0)  # (no pause before each look)
    return adapter


LOST = [
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("Server disconnected"),
    httpx.Response(502, text="Bad Gateway"),
    httpx.Response(504, json={"error": {"message": "upstream timed out"}}),
    httpx.Response(200, text="<html>proxy</html>"),
]


@pytest.mark.parametrize("create", LOST)
@pytest.mark.parametrize("metadata", [True, False])
async def test_a_batch_made_though_its_create_call_failed_is_found_and_followed(create, metadata):
    """The create's answer was lost, not the batch: it runs, and bills, all the same, so
    it is found in the account's batches (by its nonce, or its input file on a server
    that keeps no metadata) and followed, never sent again the realtime way."""
    account = Account(create, made=True, metadata=metadata)
    assert await looking_adapter(account).submit_batch([("r0", call())], KEY) == "batch_made"
    [listed] = account.asked("GET", "/batches")
    assert listed.url.params["limit"] == "100"
    assert not account.asked("DELETE", "/files/file-in")


@pytest.mark.parametrize("create", LOST)
async def test_a_batch_not_made_by_its_failed_create_call_fails_as_it_did(create):
    """Absent at every look, back to the batches made before the call: its requests may
    go on the realtime way (a retryable error), and its input file is gone (a create
    still on its way at the vendor then finds none to run)."""
    account = Account(create, made=False, older=150)  # (the look stops at the first)
    with pytest.raises(VendorUnavailable) as caught:
        await looking_adapter(account).submit_batch([("r0", call())], KEY)
    assert caught.value.retryable and not isinstance(caught.value, VendorAnswerUnreadable)
    assert len(account.asked("GET", "/batches")) == 2  # a look after each pause
    assert len(account.asked("DELETE", "/files/file-in")) == 1


@pytest.mark.parametrize("why", ["list fails", "out of order", "too many since", "no id"])
async def test_a_failed_create_call_nobody_can_settle_fails_its_requests_for_good(why):
    """Whether the batch was made cannot be told: it may run and bill, so its requests
    are never sent again (not retryable), and its input file stays (it may be read)."""
    account = Account(httpx.ReadTimeout("timed out"), made=why == "no id", made_id="")
    now = int(time.time())
    if why == "out of order":
        account.batches = [{"id": "a", "created_at": now - 60}, {"id": "b", "created_at": now}]
    elif why == "too many since":
        account.batches = [{"id": f"b{i}", "created_at": now} for i in range(1000)]
    account.list_fails = why == "list fails"
    with pytest.raises(VendorAnswerUnreadable) as caught:
        await looking_adapter(account).submit_batch([("r0", call())], KEY)
    assert not caught.value.retryable
    assert "may run" in caught.value.message and "timed out" in caught.value.message
    assert not account.asked("DELETE", "/files/file-in")
    if why == "too many since":
        afters = [r.url.params.get("after") for r in account.asked("GET", "/batches")]
        assert afters == [None, "b99", "b199", "b299", "b399"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, VendorBadRequest), (429, VendorRateLimited), (401, VendorAuthFailed)],
)
async def test_a_refused_batch_create_stands_and_its_input_file_goes(status, error):
    """A 4xx made no batch: no look, the refusal as it was, and no file left behind."""
    refusal = httpx.Response(status, json={"error": {"message": "no", "code": "x"}})
    account = Account(refusal, made=False)
    with pytest.raises(error):
        await looking_adapter(account).submit_batch([("r0", call())], KEY)
    assert not account.asked("GET", "/batches")
    assert len(account.asked("DELETE", "/files/file-in")) == 1


@pytest.mark.parametrize(
    ("create", "error"),
    [
        (httpx.ConnectError("Connection refused"), VendorUnavailable),
        (httpx.ConnectTimeout("timed out"), VendorUnavailable),
        (httpx.Response(503, json={"error": {"message": "overloaded"}}), VendorOverloaded),
    ],
    ids=["refused", "connect-timeout", "503"],
)
async def test_a_batch_create_call_that_never_went_out_or_was_turned_away_stands(create, error):
    """No connection to the create call (nothing was sent), or the vendor turning it
    away busy: no batch was made, so no look, the failure as it was (retryable: its
    requests go on the realtime way), and no file left behind."""
    account = Account(create, made=False)
    with pytest.raises(error) as caught:
        await looking_adapter(account).submit_batch([("r0", call())], KEY)
    assert caught.value.retryable and not isinstance(caught.value, VendorAnswerUnreadable)
    assert not account.asked("GET", "/batches")
    assert len(account.asked("DELETE", "/files/file-in")) == 1


async def test_a_batch_leaves_out_only_the_requests_the_vendor_cannot_take():
    """More stop sequences than OpenAI takes is that request's refusal, named before
    anything is uploaded, so the lane can send the others in the batch without it."""
    account = Account(httpx.Response(200, json={"id": "batch_1"}), made=False)
    many = call({"messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]})
    openai = adapter_for(account, "https://api.openai.com/v1")  # (others take more)
    with pytest.raises(CallsRefused) as caught:
        await openai.submit_batch([("r0", call()), ("r1", many)], KEY)
    [(cid, refusal)] = caught.value.refused.items()
    assert cid == "r1" and isinstance(refusal, VendorUnsupported) and refusal.retryable
    assert account.seen == []


def batch_handler(status: str, **batch):
    def line(n: int, response: dict | None, error: dict | None = None) -> dict:
        return {"id": f"batch_req_{n}", "custom_id": f"r{n}", "response": response, "error": error}

    output = [line(1, {"status_code": 200, "request_id": "req_1", "body": COMPLETION})]
    bad = {"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}}
    expired = {"code": "batch_expired", "message": "Not executed before the window expired."}
    errors = [
        line(2, {"status_code": 400, "request_id": "req_2", "body": bad}),
        line(3, None, expired),
    ]
    files = {"file-out": output, "file-err": errors}

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/batches/batch_1":
            return httpx.Response(200, json={"id": "batch_1", "status": status, **batch})
        name = path.split("/")[-2]
        return httpx.Response(200, text="".join(json.dumps(x) + "\n" for x in files[name]))

    return handler


@pytest.mark.parametrize("status", ["validating", "in_progress", "finalizing", "cancelling"])
async def test_poll_batch_is_none_while_running(status):
    assert await adapter_for(batch_handler(status)).poll_batch("batch_1", KEY) is None


async def test_poll_batch_reads_output_and_error_files():
    handler = batch_handler("completed", output_file_id="file-out", error_file_id="file-err")
    results = await adapter_for(handler).poll_batch("batch_1", KEY)

    assert set(results) == {"r1", "r2", "r3"}
    assert results["r1"] == VendorResult(
        COMPLETION, Usage(input_tokens=2100, output_tokens=4, cache_read_tokens=2048)
    )
    assert isinstance(results["r2"], VendorBadRequest)
    assert "Invalid 'messages'" in results["r2"].message
    assert isinstance(results["r3"], VendorUnavailable)
    assert "batch_expired" in results["r3"].message


async def test_a_batch_line_that_cannot_be_read_is_its_request_s_alone():
    """The vendor ran the request and may have billed it: an answer nobody can read is
    that request's VendorAnswerUnreadable (never sent again), and the batch's other
    answers are read all the same."""
    usage = {"prompt_tokens": "a", "completion_tokens": 4, "total_tokens": 4}
    lines = [
        {"custom_id": "ok", "response": {"status_code": 200, "body": COMPLETION}},
        {"custom_id": "count", "response": {"status_code": 200, "body": {**COMPLETION, "usage": usage}}},
        {"custom_id": "string", "response": "oops"},
        {"custom_id": "status", "response": {"status_code": "two hundred", "body": COMPLETION}},
        {"custom_id": "no-status", "response": {"body": COMPLETION}},
        {"custom_id": "proxy", "response": {"status_code": 200, "body": {"error": {"message": "x"}}}},
        {"custom_id": "nothing", "response": None, "error": None},
        {"custom_id": "late", "response": None, "error": {"code": "batch_expired"}},
    ]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/batch_1":
            done = {"id": "batch_1", "status": "completed", "output_file_id": "file-out"}
            return httpx.Response(200, json=done)
        return httpx.Response(200, text="".join(json.dumps(x) + "\n" for x in lines))

    results = await adapter_for(handler).poll_batch("batch_1", KEY)
    assert isinstance(results.pop("ok"), VendorResult)
    late = results.pop("late")
    assert type(late) is VendorUnavailable and late.retryable, "never run: another route may"
    assert set(results) == {"count", "string", "status", "no-status", "proxy", "nothing"}
    for got in results.values():
        assert isinstance(got, VendorAnswerUnreadable) and not got.retryable


async def test_poll_batch_that_failed_validation_raises():
    errors = {"object": "list", "data": [{"code": "invalid_json", "message": "line 1 is not JSON"}]}
    handler = batch_handler("failed", errors=errors)
    with pytest.raises(VendorBadRequest, match="line 1 is not JSON"):
        await adapter_for(handler).poll_batch("batch_1", KEY)


async def test_cancel_batch_posts_to_the_batch_s_cancel_path():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "batch_1", "status": "cancelling"})

    await adapter_for(handler).cancel_batch("batch_1", KEY)
    assert [(r.method, str(r.url)) for r in seen] == [("POST", f"{BASE}/batches/batch_1/cancel")]
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


async def test_cancel_batch_refused_raises_the_vendor_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"message": "busy", "type": "server_error"}})

    with pytest.raises(VendorUnavailable):
        await adapter_for(handler).cancel_batch("batch_1", KEY)


async def test_ollama_openai_compatible_endpoint_without_key_sends_no_auth():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    await adapter_for(handler, base="http://127.0.0.1:11434/v1/").chat(call(key=""))
    assert str(seen[0].url) == "http://127.0.0.1:11434/v1/chat/completions"
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("openai", OpenAIAdapter),
        ("azure", AzureOpenAIAdapter),
        ("anthropic", AnthropicAdapter),
        ("ollama", OllamaAdapter),
    ],
)
def test_make_adapter_picks_the_class_by_kind(kind, cls):
    adapter = make_adapter(VendorConfig(kind=kind, base_url="http://x.test"), httpx.AsyncClient())
    assert type(adapter) is cls
    assert isinstance(adapter, ChatVendor)
    assert isinstance(adapter, EmbeddingVendor) == (kind != "anthropic")
    assert isinstance(adapter, BatchVendor) == (kind != "ollama")


def test_reasoning_models_get_max_completion_tokens_others_keep_max_tokens():
    def body(model: str) -> dict[str, object]:
        call = VendorCall(
            model=model,
            body={
                "model": "alias",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "x"}],
            },
            api_key="k",
        )
        return OpenAIAdapter(
            VendorConfig(kind="openai", base_url="http://v/v1", api_key_env="K"),
            httpx.AsyncClient(),
        )._body(call)

    assert body("o3-mini")["max_completion_tokens"] == 100 and "max_tokens" not in body("o3-mini")
    assert body("gpt-5-nano")["max_completion_tokens"] == 100
    assert body("gpt-4o-mini")["max_tokens"] == 100 and "max_completion_tokens" not in body(
        "gpt-4o-mini"
    )


def test_max_completion_tokens_reaches_other_servers_as_max_tokens():
    """Ollama's /v1 (and DeepSeek) read max_tokens alone and drop max_completion_tokens
    unread: a chat client's cap goes to them as max_tokens, the new name winning over an
    old one beside it; OpenAI itself, Azure and reasoning models keep the new name."""
    asked = {"messages": MESSAGES, "max_completion_tokens": 10}
    ollama = adapter_for(lambda r: httpx.Response(500), "http://127.0.0.1:11434/v1")
    sent = ollama._body(VendorCall("llama3.2", asked, "k"))
    assert sent["max_tokens"] == 10 and "max_completion_tokens" not in sent
    both = ollama._body(VendorCall("llama3.2", {**asked, "max_tokens": 99}, "k"))
    assert both["max_tokens"] == 10 and "max_completion_tokens" not in both
    assert ollama._body(VendorCall("o3-mini", asked, "k"))["max_completion_tokens"] == 10
    for config in (
        VendorConfig(kind="openai", base_url="https://api.openai.com/v1"),
        VendorConfig(kind="azure", base_url="https://r.openai.azure.com", api_version="2024-10-21"),
    ):
        adapter = make_adapter(config, httpx.AsyncClient())
        assert isinstance(adapter, OpenAIAdapter)
        kept = adapter._body(VendorCall("gpt-4o-mini", asked, "k"))
        assert kept["max_completion_tokens"] == 10 and "max_tokens" not in kept


def test_reasoning_models_behind_prefixes_and_azure_hosts_keep_the_new_limit():
    """A gateway's ``provider/`` prefix, a fine-tune's ``ft:``, and Azure's v1 API reached
    as ``kind: openai`` (any deployment name) keep max_completion_tokens, which OpenAI's
    reasoning models need (they refuse max_tokens)."""
    asked = {"messages": MESSAGES, "max_completion_tokens": 10}
    proxy = adapter_for(lambda r: httpx.Response(500), "https://models.example.com/v1")
    for model in ("openai/o4-mini", "ft:o4-mini-2025-04-16:org::abc", "openai/gpt-5-mini"):
        sent = proxy._body(VendorCall(model, asked, "k"))
        assert sent["max_completion_tokens"] == 10 and "max_tokens" not in sent, model
    assert proxy._body(VendorCall("llama-3.1-8b", asked, "k"))["max_tokens"] == 10
    for base in (
        "https://res.openai.azure.com/openai/v1",
        "https://res.cognitiveservices.azure.com/openai/v1",
    ):
        azure_v1 = adapter_for(lambda r: httpx.Response(500), base)
        sent = azure_v1._body(VendorCall("prod-reasoner", asked, "k"))
        assert sent["max_completion_tokens"] == 10 and "max_tokens" not in sent, base


def test_o_series_models_go_without_parallel_tool_calls_which_they_refuse():
    """o1, o3-mini, o3, o4-mini answer parallel_tool_calls (true or false) with a 400; a
    legacy ``functions`` request carries it false, though its client never sent it."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    asked = {"messages": MESSAGES, "tools": tools, "parallel_tool_calls": False}
    adapter = adapter_for(lambda r: httpx.Response(500))
    for model in ("o1", "o3-mini", "o4-mini-2025-04-16"):
        assert "parallel_tool_calls" not in adapter._body(VendorCall(model, asked, "k"))
    for model in ("gpt-4o", "gpt-5-mini"):
        assert adapter._body(VendorCall(model, asked, "k"))["parallel_tool_calls"] is False


@pytest.mark.parametrize("stream", [False, True])
async def test_a_vendor_refusing_parallel_tool_calls_is_asked_again_without_it(stream):
    """A model whose name does not say it refuses the knob (an Azure deployment's) is
    sent the request again without it, once; any other 400 stays the client's."""
    refusal = {
        "message": "Unsupported parameter: 'parallel_tool_calls' is not supported with this model.",
        "type": "invalid_request_error",
        "param": "parallel_tool_calls",
        "code": "unsupported_parameter",
    }
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        seen.append(sent)
        if "parallel_tool_calls" in sent:
            return httpx.Response(400, json={"error": refusal})
        if sent.get("stream"):
            return httpx.Response(200, content=sse(chunk({"content": "Hi"}, "stop"), "[DONE]"))
        return httpx.Response(200, json=COMPLETION)

    tools = [{"type": "function", "function": {"name": "f"}}]
    asked = {"messages": MESSAGES, "tools": tools, "parallel_tool_calls": False}
    adapter = adapter_for(handler)
    if stream:
        *chunks, _ = await collect(adapter.stream(call(asked)))
        assert chunks[0]["choices"][0]["delta"] == {"content": "Hi"}
    else:
        assert (await adapter.chat(call(asked))).body["choices"] == COMPLETION["choices"]
    assert [("parallel_tool_calls" in sent) for sent in seen] == [True, False]

    seen.clear()
    other = {**refusal, "param": "tools"}

    def refusing(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(400, json={"error": other})

    adapter = adapter_for(refusing)
    with pytest.raises(VendorBadRequest):
        if stream:
            await collect(adapter.stream(call(asked)))
        else:
            await adapter.chat(call(asked))
    assert len(seen) == 1


# OpenAI's answer to reasoning_effort on a model that does not reason (gpt-4o, gpt-4.1).
EFFORT_REFUSED = {
    "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
    "type": "invalid_request_error",
    "param": "reasoning_effort",
    "code": "unsupported_parameter",
}
# An Anthropic client's request: its thinking goes out as reasoning_effort "low".
THINKING_BODY = {
    "model": "relay-alias",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4000,
    "thinking": {"type": "enabled", "budget_tokens": 2000},
}


# Ollama's /v1 (openai.NewError: no param, no code) for a model without thinking, which
# it reads reasoning_effort as.
OLLAMA_NO_THINKING = {
    "message": '"llama3.2" does not support thinking',
    "type": "api_error",
    "param": None,
    "code": None,
}


def refusing_effort(seen: list[dict], refusal: dict = EFFORT_REFUSED):
    """OpenAI as a model that does not reason: a 400 for reasoning_effort, else an answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        seen.append(sent)
        if "reasoning_effort" in sent:
            return httpx.Response(400, json={"error": refusal})
        if sent.get("stream"):
            return httpx.Response(200, content=sse(chunk({"content": "Hi"}, "stop"), "[DONE]"))
        return httpx.Response(200, json=COMPLETION)

    return handler


async def answer_of(adapter: OpenAIAdapter, asked: dict, stream: bool) -> Any:
    if stream:
        *chunks, _ = await collect(adapter.stream(call(asked)))
        return chunks[0]["choices"][0]["delta"]
    return (await adapter.chat(call(asked))).body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "refusal",
    [
        EFFORT_REFUSED,
        {
            **EFFORT_REFUSED,
            "message": "Unsupported value: 'reasoning_effort' does not support 'low' with "
            "this model. Supported values are: 'high'.",
            "code": "unsupported_value",
        },
        {  # a server that names the field in its words only
            "message": "Unrecognized request argument supplied: reasoning_effort",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        },
        OLLAMA_NO_THINKING,  # names no field: says what the model lacks
        {**OLLAMA_NO_THINKING, "message": 'think value "low" is not supported for this model'},
    ],
    ids=["unsupported_parameter", "unsupported_value", "unrecognized", "ollama", "ollama-level"],
)
async def test_reasoning_effort_the_relay_added_is_dropped_when_the_model_refuses_it(
    stream: bool, refusal: dict
):
    """An Anthropic client's thinking becomes reasoning_effort for an OpenAI-format
    candidate; a model that does not reason refuses it (a 400, never billed), and the
    request is sent again once without it and answered, rather than failing the plan."""
    seen: list[dict] = []
    adapter = adapter_for(refusing_effort(seen, refusal))
    got = await answer_of(adapter, THINKING_BODY, stream)
    assert got in ("A cat.", {"content": "Hi"})
    assert [sent.get("reasoning_effort") for sent in seen] == ["low", None]
    assert "thinking" not in seen[1] and seen[1]["messages"] == THINKING_BODY["messages"]
    assert THINKING_BODY["thinking"] == {"type": "enabled", "budget_tokens": 2000}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_clients_own_reasoning_effort_refused_stays_its_400(stream: bool):
    """reasoning_effort the client sent itself (an OpenAI or Responses client) is its
    choice: the model's refusal reaches it, naming the field, with nothing sent again."""
    seen: list[dict] = []
    adapter = adapter_for(refusing_effort(seen))
    asked = {"model": "relay-alias", "messages": MESSAGES, "reasoning_effort": "low"}
    with pytest.raises(VendorBadRequest) as info:
        await answer_of(adapter, asked, stream)
    assert (info.value.param, info.value.vendor_code) == (
        "reasoning_effort",
        "unsupported_parameter",
    )
    assert len(seen) == 1

    seen.clear()  # another 400 about a request carrying the relay's effort stays too
    other = {**EFFORT_REFUSED, "param": "messages", "message": "Invalid 'messages'."}
    with pytest.raises(VendorBadRequest):
        await answer_of(adapter_for(refusing_effort(seen, other)), THINKING_BODY, stream)
    assert len(seen) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_clients_own_reasoning_effort_an_ollama_model_refuses_passes_it_on(stream):
    """Ollama's /v1 says what the model lacks rather than blaming the field: a client's
    own reasoning_effort is not struck, and the request goes to the next candidate, which
    may think, as native Ollama passes it on."""
    seen: list[dict] = []
    adapter = adapter_for(refusing_effort(seen, OLLAMA_NO_THINKING))
    asked = {"model": "relay-alias", "messages": MESSAGES, "reasoning_effort": "low"}
    with pytest.raises(VendorUnsupported, match="does not support thinking"):
        await answer_of(adapter, asked, stream)
    assert len(seen) == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "said",
    [
        "registry.ollama.ai/library/gemma3:1b does not support tools",
        '"llama3.2" does not support thinking',
        "invalid image input",
        "image URLs are not currently supported, please use base64 encoded data instead",
    ],
)
async def test_what_a_local_model_behind_ollama_v1_lacks_passes_the_request_on(stream, said):
    """Ollama's /v1 refuses what one local model lacks with a 400 without code or field,
    as its native API does: that candidate cannot serve the request, another may (its
    health untouched), rather than the client getting a 400 no fallback was tried for.
    OpenAI's own 400s in the same words stay the client's."""
    tools = [{"type": "function", "function": {"name": "f"}}]
    asked = {"model": "relay-alias", "messages": MESSAGES, "tools": tools}
    refusal = {"error": {"message": said, "type": "api_error", "param": None, "code": None}}
    for base, cls in ((BASE, VendorUnsupported), ("https://api.openai.com/v1", VendorBadRequest)):
        adapter = adapter_for(lambda r: httpx.Response(400, json=refusal), base)
        with pytest.raises(cls, match=said[:20]) as err:
            await answer_of(adapter, asked, stream)
        assert type(err.value) is cls and err.value.status == 400
        assert err.value.retryable is (cls is VendorUnsupported)


@pytest.mark.parametrize("stream", [False, True])
async def test_each_knob_a_model_refuses_is_struck_in_turn(stream: bool):
    """OpenAI names one refused parameter at a time: parallel_tool_calls (a legacy
    ``functions`` request's), then the relay's reasoning_effort; each goes, once."""
    seen: list[dict] = []
    knob = {**EFFORT_REFUSED, "param": "parallel_tool_calls", "message": "No knob."}

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        seen.append(sent)
        if "parallel_tool_calls" in sent:
            return httpx.Response(400, json={"error": knob})
        return refusing_effort([])(request)

    tools = [{"type": "function", "function": {"name": "f"}}]
    asked = {**THINKING_BODY, "tools": tools, "parallel_tool_calls": False}
    assert await answer_of(adapter_for(handler), asked, stream) in ("A cat.", {"content": "Hi"})
    assert [sorted({"parallel_tool_calls", "reasoning_effort"} & set(s)) for s in seen] == [
        ["parallel_tool_calls", "reasoning_effort"],
        ["reasoning_effort"],
        [],
    ]


def test_openai_itself_and_azure_get_max_completion_tokens_for_any_chat_model():
    """An Azure deployment's name says nothing of its model, and OpenAI takes the new name
    for every chat model; legacy /completions keeps max_tokens, its only name."""
    call = VendorCall(
        model="prod-deployment",
        body={"max_tokens": 100, "messages": [{"role": "user", "content": "x"}]},
        api_key="k",
    )
    for config in (
        VendorConfig(kind="azure", base_url="https://r.openai.azure.com", api_version="2024-10-21"),
        VendorConfig(kind="openai", base_url="https://api.openai.com/v1"),
    ):
        adapter = make_adapter(config, httpx.AsyncClient())
        assert isinstance(adapter, OpenAIAdapter)
        assert adapter._body(call)["max_completion_tokens"] == 100
        assert adapter._body(call, chat=False)["max_tokens"] == 100


def test_top_k_reaches_openai_compatible_servers_but_not_openai_itself():
    call = VendorCall(model="m", body={"messages": [], "top_k": 40}, api_key="k")
    vllm = make_adapter(
        VendorConfig(kind="openai", base_url="http://vllm:8000/v1"), httpx.AsyncClient()
    )
    openai_ = make_adapter(
        VendorConfig(kind="openai", base_url="https://api.openai.com/v1"), httpx.AsyncClient()
    )
    assert isinstance(vllm, OpenAIAdapter) and isinstance(openai_, OpenAIAdapter)
    assert vllm._body(call)["top_k"] == 40
    assert "top_k" not in openai_._body(call)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}),
        (402, {"type": "error", "error": {"type": "billing_error", "message": "pay up"}}),
        (400, {"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "Your credit balance is too low to access the API"}}),
    ],
)  # fmt: skip
async def test_an_account_out_of_credit_is_the_key_s_failure_not_a_wait_or_the_client_s(
    status, body
):
    """The key is benched and the pool's next key (or vendor) answers, as for a revoked
    key: no retry into a quota that is gone, no 400 blaming the client."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    with pytest.raises(VendorAuthFailed) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retryable and f"HTTP {status}" in err.value.message


async def test_a_client_s_400_quoting_the_credit_phrase_stays_the_client_s_400():
    """OpenAI quotes the value a client sent: a tenant must not bench every key (and open
    the breaker for everyone) by sending the words."""
    said = "Invalid value: 'Your credit balance is too low'. Supported values are: 'low'."
    body = {"error": {"message": said, "type": "invalid_request_error", "code": "invalid_value"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    with pytest.raises(VendorBadRequest):
        await adapter_for(handler).chat(call())


async def test_a_server_that_reports_no_usage_is_estimated_not_free() -> None:
    """Some OpenAI-compatible servers send no usage: the answer is metered at an
    estimate (as a stream without its usage chunk is), never cached and billed as 0."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    body = {"model": "relay-alias", "messages": MESSAGES}
    usage = (await adapter_for(handler).chat(call(body))).usage
    assert usage.input_tokens > 0 and usage.output_tokens == 101  # 400 characters, /4, +1


async def test_a_user_too_long_for_openai_goes_as_a_stable_64_character_digest() -> None:
    """Claude Code's metadata.user_id (~150 characters) becomes OpenAI's ``user``, which
    OpenAI refuses past 64: it goes as a digest, the same each time for the same user,
    and the request itself keeps the full value for the relay's own use."""
    long_user = "user_" + "a" * 64 + "_account_" + "1" * 36 + "_session_" + "2" * 36
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=COMPLETION)

    body = {"model": "relay-alias", "messages": MESSAGES, "user": long_user}
    other = {**body, "user": long_user.replace("2", "3")}
    for given in (body, body, other, {**body, "user": "short-user"}):
        await adapter_for(handler).chat(call(given))
    users = [s["user"] for s in sent]
    assert all(len(u) <= 64 for u in users)
    assert users[0] == users[1] != users[2]
    assert users[3] == "short-user"  # a user that fits goes as it is
    assert body["user"] == long_user


async def test_a_document_only_anthropic_reads_goes_on_to_the_anthropic_candidate() -> None:
    """A document by URL has no OpenAI twin: the OpenAI candidate refuses it without
    ending the request, and the Anthropic one after it answers."""
    import time

    from gateway.anthropic_routes import neutral_request
    from schemas.config import Candidate
    from tests.support.envelopes import request_envelope
    from tests.unit.test_dispatch import real_vendors

    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    dispatch, seen = real_vendors(
        openai=httpx.Response(200, json=COMPLETION), anthropic=httpx.Response(200, json=message)
    )
    plan = [Candidate(vendor="openai", model="gpt-4o"), Candidate(vendor="anthropic", model="c")]
    doc = {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}}
    content = [doc, {"type": "text", "text": "Summarise"}]
    body = neutral_request(
        {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": content}]}
    )
    env = request_envelope(deadline_ms=int((time.time() + 5) * 1000), body=body)
    out = await dispatch.run(env, plan, None)
    assert out.error is None and out.candidate == plan[1]
    assert [(e.vendor, e.error_code) for e in seen] == [
        ("openai", "vendor_unsupported"),
        ("anthropic", None),
    ]
    out = await dispatch.run(env, plan[:1], None)  # no Anthropic candidate: a 400 says why
    assert out.error is not None and out.error.status == 400
    assert "reaches Anthropic vendors only" in out.error.message


@pytest.mark.parametrize(
    "config",
    [
        VendorConfig(kind="openai", base_url="https://api.openai.com/v1"),
        VendorConfig(kind="azure", base_url="https://r.openai.azure.com", api_version="2024-10-21"),
    ],
)
async def test_more_stop_sequences_than_openai_takes_pass_the_request_on(config) -> None:
    """An Anthropic client may send any number of stop_sequences; OpenAI and Azure take
    four.  Refused before sending, as this candidate's limit: an Anthropic one may serve."""
    from gateway.anthropic_routes import neutral_request

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    adapter = make_adapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    assert isinstance(adapter, OpenAIAdapter)
    stops = ["</a>", "</b>", "</c>", "</d>", "</e>"]
    body = neutral_request(
        {
            "model": "m",
            "max_tokens": 9,
            "stop_sequences": stops,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    with pytest.raises(VendorUnsupported, match="stop_sequences") as err:
        await adapter.chat(call(body))
    assert err.value.retryable and err.value.status == 400 and seen == []
    await adapter.chat(call({**body, "stop": stops[:4]}))  # four are fine
    assert json.loads(seen[0].content)["stop"] == stops[:4]


async def test_an_openai_compatible_server_gets_every_stop_sequence() -> None:
    """vLLM and other OpenAI-compatible servers take more than four."""
    sent: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json=COMPLETION)

    stops = ["a", "b", "c", "d", "e"]
    await adapter_for(handler).chat(call({"messages": MESSAGES, "stop": stops}))
    assert sent[0]["stop"] == stops


@pytest.mark.parametrize(
    ("answer", "cls", "said"),
    [
        ({"error": {"message": f"upstream failed for {KEY}", "code": 502}}, VendorUnavailable,
         "upstream failed for [redacted]"),
        ({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}, VendorRateLimited,
         "slow down"),
        ({"error": "overloaded"}, VendorUnavailable, "overloaded"),
        ({"id": "gen-1", "object": "chat.completion"}, VendorUnavailable, "no choices"),
        ({"id": "gen-1", "choices": None}, VendorUnavailable, "no choices"),
        ({"id": "gen-1", "object": "chat.completion", "choices": []}, VendorUnavailable,
         "no choices"),
    ],
)  # fmt: skip
async def test_a_200_without_an_answer_is_the_vendor_s_failure(answer, cls, said) -> None:
    """OpenRouter answers a model failing mid-answer with a 200 and an error object: that
    is no answer to pass on (or cache), but a failure the next candidate may not have,
    in the vendor's words, and never with the key in them."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    with pytest.raises(cls) as err:
        await adapter_for(handler).chat(call({"model": "relay-alias", "messages": MESSAGES}))
    assert err.value.retryable and said in err.value.message
    assert KEY not in err.value.message
    with pytest.raises(cls):  # legacy /completions answers in choices too
        await adapter_for(handler).complete(call({"model": "relay-alias", "prompt": ["x"]}))


async def test_poll_batch_reads_an_answer_holding_a_unicode_line_separator():
    """JSON allows U+2028/U+2029/U+0085 raw in strings (orjson and serde write them so):
    lines end at \\n alone, or one answer would lose the whole paid batch.  A line that
    does not read is skipped: its request alone hears that nothing came back."""
    body = {**COMPLETION, "choices": [{**COMPLETION["choices"][0]}]}
    body["choices"][0]["message"] = {"role": "assistant", "content": "one\u2028two\u0085three"}
    good = {"id": "b1", "custom_id": "r1", "response": {"status_code": 200, "body": body}}
    text = json.dumps(good, ensure_ascii=False) + "\n{not json\n"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/batch_1":
            return httpx.Response(
                200, json={"id": "batch_1", "status": "completed", "output_file_id": "file-out"}
            )
        return httpx.Response(200, content=text.encode())

    results = await adapter_for(handler).poll_batch("batch_1", KEY)
    assert set(results) == {"r1"}
    assert isinstance(results["r1"], VendorResult)
    assert results["r1"].body["choices"][0]["message"]["content"] == "one\u2028two\u0085three"


async def test_thinking_sent_as_reasoning_comes_on_as_reasoning_content() -> None:
    """Ollama's /v1, vLLM and OpenRouter send a model's thinking as ``reasoning``: it goes
    on as ``reasoning_content``, the one name the translators read (a Responses client
    gets its reasoning item) and the usage estimate counts, streamed or not."""
    from schemas.formats.responses import openai_response_to_responses

    thought = "Let me think" * 10  # 120 characters
    answer = {**COMPLETION, "usage": None}
    answer["choices"] = [{**COMPLETION["choices"][0]}]
    answer["choices"][0]["message"] = {"role": "assistant", "content": "Hi", "reasoning": thought}
    stream = [chunk({"role": "assistant", "content": "", "reasoning": thought}), chunk({}, "stop")]

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=sse(*stream, "[DONE]"))
        return httpx.Response(200, json=answer)

    body = {"model": "relay-alias", "messages": MESSAGES}
    whole = await adapter_for(handler).chat(call(body))
    message = whole.body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hi", "reasoning_content": thought}
    assert whole.usage.output_tokens == 31  # 122 characters, /4, +1: the thinking counted
    request = {"model": "m", "input": "hi"}
    output = openai_response_to_responses(whole.body, whole.usage, request)["output"]
    assert [item["type"] for item in output] == ["reasoning", "message"]

    *chunks, usage = await collect(adapter_for(handler).stream(call(body)))
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "reasoning_content": thought,
    }
    assert usage.output_tokens == 31  # 120 characters of thinking, /4, +1


async def test_a_vendor_sending_both_reasoning_names_keeps_both_as_sent() -> None:
    delta = {"reasoning": "a", "reasoning_content": "b"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(chunk(dict(delta)), "[DONE]"))

    *chunks, _ = await collect(adapter_for(handler).stream(call()))
    assert chunks[0]["choices"][0]["delta"] == delta


def test_openai_s_regional_hosts_are_openai_itself():
    """eu.api.openai.com and its kind (data residency) take what api.openai.com takes:
    top_k is dropped, more than 4 stops refused before sending (the next candidate
    serves), max_tokens sent as max_completion_tokens."""
    body = {"messages": [], "top_k": 40, "max_tokens": 9, "stop": list("abcde")}
    regional = adapter_for(lambda r: httpx.Response(500), base="https://eu.api.openai.com/v1")
    sent = regional._body(
        VendorCall(model="gpt-4o-mini", body={**body, "stop": ["a"]}, api_key="k")
    )
    assert "top_k" not in sent and sent["max_completion_tokens"] == 9 and "max_tokens" not in sent
    with pytest.raises(VendorUnsupported):
        regional._body(VendorCall(model="gpt-4o-mini", body=body, api_key="k"))


async def test_an_embeddings_200_without_data_is_the_vendor_s_failure_and_no_usage_is_estimated():
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"message": "upstream failed", "code": 502}})

    embed = VendorCall(model="emb", body={"model": "e", "input": "hello " * 500}, api_key=KEY)
    with pytest.raises(VendorUnavailable, match="upstream failed"):
        await adapter_for(failing).embed(embed)

    def usageless(request: httpx.Request) -> httpx.Response:
        data = [{"object": "embedding", "index": 0, "embedding": [0.1]}]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "emb"})

    result = await adapter_for(usageless).embed(embed)
    assert result.usage.input_tokens >= 700, "about 3000 characters, metered, not free"


async def test_a_batch_line_s_error_keeps_the_vendor_s_code_as_a_live_answer_does():
    """Azure's content_filter keeps its code and the field it blamed; an account out of
    credit is the key's failure, not a rate limit to wait out; any other 400's code is
    carried for OpenAI-format clients."""
    filtered = {"error": {"message": "filtered", "code": "content_filter", "param": "prompt"}}
    quota = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    overflow = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    output = [
        {"custom_id": "a", "response": {"status_code": 400, "body": filtered}},
        {"custom_id": "b", "response": {"status_code": 429, "body": quota}},
        {"custom_id": "c", "response": {"status_code": 400, "body": overflow}},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/batch_1":
            done = {"id": "batch_1", "status": "completed", "output_file_id": "file-out"}
            return httpx.Response(200, json=done)
        return httpx.Response(200, text="".join(json.dumps(x) + "\n" for x in output))

    results = await adapter_for(handler).poll_batch("batch_1", KEY)
    assert isinstance(results["a"], ContentFiltered) and results["a"].param == "prompt"
    assert isinstance(results["b"], VendorAuthFailed)
    assert isinstance(results["c"], VendorBadRequest)
    assert results["c"].vendor_code == "context_length_exceeded"


async def test_a_batch_line_refusing_a_knob_goes_on_the_realtime_way_where_it_is_struck():
    """A batch line carries what the realtime way strikes when the model refuses it (the
    relay's reasoning_effort, parallel_tool_calls), and the result file says nothing of
    whether the relay or the client set it: its 400 is retryable, a "not this way"
    (unbilled), so the request goes the realtime way, where it is struck and asked again
    or, the client's own, its 400.  Any other 400 stays the request's answer."""
    words = {"message": "Unrecognized request argument supplied: reasoning_effort"}
    knob = {**EFFORT_REFUSED, "param": "parallel_tool_calls", "message": "No knob."}
    other = {**EFFORT_REFUSED, "param": "messages", "message": "Invalid 'messages'."}
    output = [
        {"custom_id": "effort", "response": {"status_code": 400, "body": {"error": EFFORT_REFUSED}}},
        {"custom_id": "words", "response": {"status_code": 400, "body": {"error": words}}},
        {"custom_id": "knob", "response": {"status_code": 400, "body": {"error": knob}}},
        {"custom_id": "other", "response": {"status_code": 400, "body": {"error": other}}},
    ]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/batch_1":
            done = {"id": "batch_1", "status": "completed", "output_file_id": "file-out"}
            return httpx.Response(200, json=done)
        return httpx.Response(200, text="".join(json.dumps(x) + "\n" for x in output))

    results = await adapter_for(handler).poll_batch("batch_1", KEY)
    blamed = {"effort": "reasoning_effort", "words": "reasoning_effort"}
    for cid, param in (blamed | {"knob": "parallel_tool_calls"}).items():
        got = results[cid]
        assert type(got) is VendorUnsupported and got.retryable and got.param == param, cid
    assert type(results["other"]) is VendorBadRequest and not results["other"].retryable


# -- parallel tool calls a server numbers its own way --------------------------------


def call_frag(index: int | None, arguments: str, **first) -> dict:
    """A tool-call fragment (``index`` None: none given); ``first`` its id and name."""
    fn = {"arguments": arguments, **({"name": first.pop("name")} if "name" in first else {})}
    return {**({} if index is None else {"index": index}), **first, "function": fn}


def calls_chunk(*frags: dict) -> dict:
    return chunk({"tool_calls": list(frags)})


WEATHER_A = {"id": "call_a", "type": "function", "name": "get_weather"}
TIME_B = {"id": "call_b", "type": "function", "name": "get_time"}
PARALLEL_CALLS = [
    ("call_a", "get_weather", '{"city":"Paris"}'),
    ("call_b", "get_time", '{"city":"Oslo"}'),
]
PARALLEL = {
    # Ollama 0.20.x /v1: every call whole, each at index 0.
    "whole at index 0": [
        calls_chunk(call_frag(0, '{"city":"Paris"}', **WEATHER_A)),
        calls_chunk(call_frag(0, '{"city":"Oslo"}', **TIME_B)),
    ],
    # Older Ollama builds: no index at all.
    "no index": [
        calls_chunk(call_frag(None, '{"city":"Paris"}', **WEATHER_A)),
        calls_chunk(call_frag(None, '{"city":"Oslo"}', **TIME_B)),
    ],
    "one chunk at index 0": [
        calls_chunk(
            call_frag(0, '{"city":"Paris"}', **WEATHER_A),
            call_frag(0, '{"city":"Oslo"}', **TIME_B),
        ),
    ],
    "fragments at index 0": [
        calls_chunk(call_frag(0, "", **WEATHER_A)),
        calls_chunk(call_frag(0, '{"city":')),
        calls_chunk(call_frag(0, '"Paris"}')),
        calls_chunk(call_frag(0, "", **TIME_B)),
        calls_chunk(call_frag(0, '{"city":"Oslo"}')),
    ],
    # OpenAI's own numbering, the calls' fragments interleaved.
    "interleaved, as OpenAI numbers them": [
        calls_chunk(call_frag(0, "", **WEATHER_A)),
        calls_chunk(call_frag(1, "", **TIME_B)),
        calls_chunk(call_frag(0, '{"city":"Paris"}')),
        calls_chunk(call_frag(1, '{"city":"Oslo"}')),
    ],
    # Poolside (mlx-openai-server before its #216): another id after a call's first
    # fragment; the SDK would join them (call_acall_a2).
    "id changed after the first fragment": [
        calls_chunk(call_frag(0, "", **WEATHER_A)),
        calls_chunk(call_frag(0, '{"city":', id="call_a2")),
        calls_chunk(call_frag(0, '"Paris"}', id="call_a2")),
        calls_chunk(call_frag(1, "", **TIME_B)),
        calls_chunk(call_frag(1, '{"city":"Oslo"}', id="call_b2")),
    ],
    # The same, each call at index 0 (two servers' habits at once).
    "id changed, at index 0": [
        calls_chunk(call_frag(0, "", **WEATHER_A)),
        calls_chunk(call_frag(0, '{"city":', id="call_a2")),
        calls_chunk(call_frag(0, '"Paris"}', id="call_a2")),
        calls_chunk(call_frag(0, "", **TIME_B)),
        calls_chunk(call_frag(0, '{"city":"Oslo"}', id="call_b2")),
    ],
    # Gemini's OpenAI endpoint: a name in pieces, some repeating the id.
    "name in pieces": [
        calls_chunk(call_frag(0, "", **{**WEATHER_A, "name": "get_"})),
        calls_chunk(call_frag(0, "", id="call_a", name="weather")),
        calls_chunk(call_frag(0, '{"city":"Paris"}')),
        calls_chunk(call_frag(1, "", **{**TIME_B, "name": "get_t"})),
        calls_chunk(call_frag(1, '{"city":', name="ime")),
        calls_chunk(call_frag(1, '"Oslo"}')),
    ],
}


def sdk_calls(chunks: list[dict]) -> list[tuple[str, str, str]]:
    """The tool calls the ``openai`` SDK's stream helper makes of ``chunks`` (it merges
    fragments by their ``index``)."""
    from openai._models import construct_type
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=c))
    message = state.current_completion_snapshot.choices[0].message
    return [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]


@pytest.mark.parametrize("shape", PARALLEL)
async def test_parallel_calls_reach_an_openai_client_live_as_a_replay_gives_them(shape):
    """An OpenAI-format client's SDK tells calls apart by ``index``: each call the server
    made is its own, numbered from 0 as OpenAI numbers them, live as in a replay of the
    cached answer (which numbers them so), not two calls joined into one."""
    from schemas.formats.openai import assemble_chunks, response_to_chunks

    sent = [*PARALLEL[shape], chunk({}, "tool_calls")]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*sent, "[DONE]"))

    *chunks, _ = await collect(adapter_for(handler).stream(call()))
    assert sdk_calls(chunks) == PARALLEL_CALLS
    assert sdk_calls(response_to_chunks(assemble_chunks(chunks))) == PARALLEL_CALLS
    if shape.startswith("interleaved"):
        assert chunks == [{k: v for k, v in c.items() if k != "usage"} for c in sent]


async def test_each_choice_numbers_its_own_calls() -> None:
    """With ``n`` > 1, each choice's calls count from 0 on their own."""
    frags = [call_frag(0, "{}", **WEATHER_A), call_frag(0, "{}", **TIME_B)]
    sent = [
        {**chunk(None), "choices": [{"index": i, "delta": {"tool_calls": frags}}]} for i in (0, 1)
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*sent, "[DONE]"))

    *chunks, _ = await collect(adapter_for(handler).stream(call()))
    said = [
        (c["choices"][0]["index"], f["id"], f["index"])
        for c in chunks
        for f in c["choices"][0]["delta"]["tool_calls"]
    ]
    assert said == [(0, "call_a", 0), (0, "call_b", 1), (1, "call_a", 0), (1, "call_b", 1)]


@pytest.mark.parametrize("kind", ["function", "custom"])
async def test_an_id_and_name_said_on_every_fragment_reach_an_openai_client_once(kind):
    """Fireworks and MiniMax on NVIDIA NIM repeat a call's id, type and name on every
    fragment; the SDK joins the strings fragments carry, so said again they would make
    call_acall_a and debug_tooldebug_tool live, where a replay of the cached answer says
    each once.  Each is said in the call's first fragment alone, as OpenAI does."""
    from schemas.formats.openai import assemble_chunks, response_to_chunks

    def frag(arguments: str, call_id: str, name: str) -> dict:
        said = "arguments" if kind == "function" else "input"
        return {"index": 0, "id": call_id, "type": kind, kind: {"name": name, said: arguments}}

    sent = [
        calls_chunk(frag("", "call_a", "debug_tool")),
        calls_chunk(frag('{"a":', "call_a", "debug_tool")),
        calls_chunk(frag("1}", "call_a", "debug_tool")),
        calls_chunk(frag("{}", "call_b", "get_time")),
        calls_chunk(frag("", "call_b", "get_time")),
        chunk({}, "tool_calls"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=sse(*sent, "[DONE]"))

    *chunks, _ = await collect(adapter_for(handler).stream(call()))
    frags = [f for c in chunks for f in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [(f["index"], f.get("id"), f[kind].get("name")) for f in frags] == [
        (0, "call_a", "debug_tool"),
        (0, None, None),
        (0, None, None),
        (1, "call_b", "get_time"),
        (1, None, None),
    ]
    assert all(f["type"] == kind for f in frags), "the type, which the SDK does not join, stays"
    if kind == "function":
        expected = [("call_a", "debug_tool", '{"a":1}'), ("call_b", "get_time", "{}")]
        assert sdk_calls(chunks) == expected
        assert sdk_calls(response_to_chunks(assemble_chunks(chunks))) == expected


# -- content sent as a list of parts (Mistral's reasoning models) -------------------


def think(text: str) -> dict:
    """Mistral's thinking part: its text in a list of text chunks."""
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}], "closed": True}


async def test_content_sent_as_parts_is_text_and_reasoning_for_every_client() -> None:
    """Mistral's reasoning models send ``content`` as a list of thinking and text parts,
    streamed or not: the text parts are the answer's text, the thinking its
    ``reasoning_content``, so a Responses client gets a reasoning item and a message
    (not a failed stream, or a list as output_text), and the stream assembles (and
    caches) into the same answer."""
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    from schemas.formats.openai import assemble_chunks
    from schemas.formats.responses import ChunksToResponseEvents, openai_response_to_responses

    answer = {**COMPLETION, "usage": None}
    parts = [think("Capital of France... "), think("Paris."), {"type": "text", "text": "Paris."}]
    answer["choices"] = [{**COMPLETION["choices"][0]}]
    answer["choices"][0]["message"] = {"role": "assistant", "content": parts}
    stream = [
        chunk({"role": "assistant", "content": [think("Capital of France... ")]}),
        chunk({"content": [think("Paris.")]}),
        chunk({"content": [{"type": "text", "text": "Par"}]}),
        chunk({"content": "is."}),  # (after its thinking, Mistral may send plain text)
        chunk({"content": [{"type": "reference", "reference_ids": [1]}]}, "stop"),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            return httpx.Response(200, content=sse(*stream, "[DONE]"))
        return httpx.Response(200, json=answer)

    body = {"model": "relay-alias", "messages": MESSAGES}
    whole = await adapter_for(handler).chat(call(body))
    message = whole.body["choices"][0]["message"]
    thought = "Capital of France... Paris."
    assert message == {"role": "assistant", "content": "Paris.", "reasoning_content": thought}
    assert whole.usage.output_tokens == (len(thought) + len("Paris.")) // 4 + 1
    request = {"model": "m", "input": "capital?"}
    response = Response.model_validate(
        openai_response_to_responses(whole.body, whole.usage, request)
    )
    assert response.output_text == "Paris."
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary[0].text == thought

    *chunks, _ = await collect(adapter_for(handler).stream(call(body)))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": None, "reasoning_content": "Capital of France... "},
        {"content": None, "reasoning_content": "Paris."},
        {"content": "Par"},
        {"content": "is."},
        {"content": None},
    ]
    assembled = assemble_chunks(chunks)["choices"][0]["message"]
    assert (assembled["content"], assembled["reasoning_content"]) == ("Paris.", thought)
    events = ChunksToResponseEvents(request, "resp_t")
    out = [data for _, data in events.start()]
    for c in chunks:
        out += [data for _, data in events.feed(c)]
    out += [data for _, data in events.finish(Usage())]
    state = ResponseStreamState(input_tools=[], text_format=omit)  # type: ignore[var-annotated]
    for data in out:
        state.handle_event(TypeAdapter(ResponseStreamEvent).validate_python(data))
    final = Response.model_validate(out[-1]["response"])
    assert final.status == "completed" and final.output_text == "Paris."
    assert [item.type for item in final.output] == ["reasoning", "message"]


async def test_a_message_of_thinking_and_tool_calls_has_null_content() -> None:
    """With no text part, content is null beside tool calls (as OpenAI's), "" else."""
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    said = [
        {"role": "assistant", "content": [think("hm")], "tool_calls": calls},
        {"role": "assistant", "content": [think("hm")]},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        choices = [{"index": i, "message": m, "finish_reason": "stop"} for i, m in enumerate(said)]
        return httpx.Response(200, json={**COMPLETION, "choices": choices})

    result = await adapter_for(handler).chat(call({"model": "relay-alias", "messages": MESSAGES}))
    got = [
        (c["message"]["content"], c["message"]["reasoning_content"]) for c in result.body["choices"]
    ]
    assert got == [(None, "hm"), ("", "hm")]


async def test_a_batch_answer_s_content_parts_are_read_as_a_live_answer_s() -> None:
    body = {**COMPLETION, "choices": [{**COMPLETION["choices"][0]}]}
    parts = [think("hm"), {"type": "text", "text": "A cat."}]
    body["choices"][0]["message"] = {"role": "assistant", "content": parts}
    line = {"id": "b1", "custom_id": "r1", "response": {"status_code": 200, "body": body}}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches/batch_1":
            return httpx.Response(
                200, json={"id": "batch_1", "status": "completed", "output_file_id": "file-out"}
            )
        return httpx.Response(200, content=(json.dumps(line) + "\n").encode())

    results = await adapter_for(handler).poll_batch("batch_1", KEY)
    assert isinstance(results["r1"], VendorResult)
    message = results["r1"].body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "A cat.", "reasoning_content": "hm"}


@pytest.mark.parametrize("base", [BASE, "https://api.openai.com/v1"])
async def test_reasoning_sent_back_by_a_responses_client_never_reaches_the_server(base) -> None:
    """A reasoning item sent back goes on as its turn's ``reasoning_content`` (an Ollama
    vendor reads it as thinking); an OpenAI-format server is not sent the field, which
    OpenAI (and Mistral, Groq) refuse."""
    from schemas.formats.responses import responses_request_to_openai

    said = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]}
    fc = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "c", "output": "x"}
    user = {"role": "user", "content": "hi"}
    body = responses_request_to_openai({"model": "m", "input": [user, said, fc, out]})
    assert body["messages"][1]["reasoning_content"] == "hm"
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=COMPLETION)

    await adapter_for(handler, base).chat(call(body))
    assert seen[0]["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


def deepseek_for(handler, send_reasoning: bool) -> OpenAIAdapter:
    config = VendorConfig(
        kind="openai", base_url="https://api.deepseek.com", send_reasoning=send_reasoning
    )
    return OpenAIAdapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


TOOL_LOOP: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Hangzhou tomorrow?"},
    {
        "role": "assistant",
        "content": None,
        "reasoning_content": "First the date.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_date", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "2025-12-02"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "",  # a tool-call turn that thought nothing still sends it
        "thinking_signature": "sig",  # an Anthropic client's: never sent
        "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c2", "content": "Rain"},
]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("send_reasoning", [True, False])
async def test_reasoning_goes_back_on_its_own_turns_only_to_a_vendor_that_wants_it(
    send_reasoning, streamed
) -> None:
    """DeepSeek's thinking mode answers 400 unless each earlier tool-call turn of the loop
    carries its reasoning_content back: with ``send_reasoning`` each assistant message
    gets its own, as the client sent it; without, it is struck as OpenAI needs.  The
    relay's body is left as it was (the cache key and other candidates read it)."""
    import copy

    from tables.cache import cache_key

    body = {"model": "relay-alias", "messages": TOOL_LOOP, "tools": [], "stream": streamed}
    before = copy.deepcopy(body)
    key = cache_key(scope="t", alias="relay-alias", endpoint="chat", body=body)
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if streamed:
            return httpx.Response(200, content=sse(chunk({"content": "Rain."}, "stop"), "[DONE]"))
        return httpx.Response(200, json=COMPLETION)

    adapter = deepseek_for(handler, send_reasoning)
    if streamed:
        await collect(adapter.stream(call(body)))
    else:
        await adapter.chat(call(body))
    sent = seen[0]["messages"]
    assert [m.get("reasoning_content") for m in sent] == (
        [None, "First the date.", None, "", None] if send_reasoning else [None] * 5
    )
    assert all("thinking_signature" not in m for m in sent)
    expected = [{k: v for k, v in m.items() if k != "thinking_signature"} for m in TOOL_LOOP]
    if not send_reasoning:
        expected = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in expected]
    assert sent == expected
    assert body == before
    assert cache_key(scope="t", alias="relay-alias", endpoint="chat", body=body) == key


async def test_a_request_without_reasoning_goes_out_the_same_either_way() -> None:
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in TOOL_LOOP[:3]]
    body = {"model": "relay-alias", "messages": plain, "user": "u"}
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(200, json=COMPLETION)

    for send_reasoning in (True, False):
        await deepseek_for(handler, send_reasoning).chat(call(body))
    assert seen[0] == seen[1]
    assert json.loads(seen[0])["messages"] == plain


async def test_a_responses_client_s_reasoning_items_reach_a_vendor_that_wants_them() -> None:
    """The reasoning item a Responses client sends back before a function call is that
    turn's reasoning_content, sent on to a ``send_reasoning`` vendor."""
    from schemas.formats.responses import responses_request_to_openai

    said = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]}
    fc = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    out = {"type": "function_call_output", "call_id": "c", "output": "x"}
    user = {"role": "user", "content": "hi"}
    body = responses_request_to_openai({"model": "m", "input": [user, said, fc, out]})
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=COMPLETION)

    await deepseek_for(handler, True).chat(call(body))
    turn = seen[0]["messages"][1]
    assert (turn["role"], turn["reasoning_content"], turn["tool_calls"][0]["id"]) == (
        "assistant",
        "hm",
        "c",
    )
