"""The Azure OpenAI adapter: deployment URLs, api-version, the api-key header."""

from __future__ import annotations

import json

import httpx
import pytest

from agents.adapters import AzureOpenAIAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import ContentFiltered, VendorAuthFailed, VendorRateLimited
from schemas.formats.openai import assemble_chunks, faithful_chunks
from schemas.usage import Usage

BASE = "https://myres.openai.azure.com"
KEY = "0123456789abcdef0123456789abcdef"
ANSWER = {
    "id": "chatcmpl-az",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-2024-11-20",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi."},
            "finish_reason": "stop",
            "content_filter_results": {},
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 2,
        "total_tokens": 1202,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}


def adapter_for(handler, api_version: str | None = None, base: str = BASE) -> AzureOpenAIAdapter:
    config = VendorConfig(kind="azure", base_url=base + "/", api_version=api_version)
    return AzureOpenAIAdapter(config, httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def call(body: dict | None = None) -> VendorCall:
    body = body or {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
    return VendorCall(model="gpt4o-prod", body=body, api_key=KEY)


def recorder(*responses: httpx.Response):
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return seen, handler


@pytest.mark.parametrize(
    ("version", "expected"), [(None, "2024-10-21"), ("2025-04-01-preview", None)]
)
async def test_chat_goes_to_the_deployment_with_api_key_header(version, expected):
    seen, handler = recorder(httpx.Response(200, json=ANSWER))
    result = await adapter_for(handler, version).chat(call())

    request = seen[0]
    assert str(request.url) == (
        f"{BASE}/openai/deployments/gpt4o-prod/chat/completions?api-version={expected or version}"
    )
    assert request.headers["api-key"] == KEY
    assert "authorization" not in request.headers
    assert json.loads(request.content)["model"] == "gpt4o-prod"
    assert result.usage == Usage(input_tokens=1200, output_tokens=2, cache_read_tokens=1024)
    assert result.body == ANSWER


async def test_stream_uses_the_deployment_url_and_carries_the_filter_chunk_s_results_on():
    filter_chunk = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    text = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
        "usage": None,
    }
    usage = {**text, "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 1}}
    events = [filter_chunk, text, usage, "[DONE]"]
    body = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
    seen, handler = recorder(httpx.Response(200, text=body))

    items = [item async for item in adapter_for(handler).stream(call())]

    assert seen[0].url.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert json.loads(seen[0].content)["stream_options"] == {"include_usage": True}
    verdict = {"prompt_filter_results": filter_chunk["prompt_filter_results"]}
    assert items == [
        {k: v for k, v in text.items() if k != "usage"} | verdict,
        Usage(input_tokens=8, output_tokens=1),
    ]


async def test_embed_goes_to_the_embedding_deployment():
    answer = {
        "object": "list",
        "data": [],
        "model": "te3",
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    seen, handler = recorder(httpx.Response(200, json=answer))
    vc = VendorCall(model="embed-prod", body={"input": "hi"}, api_key=KEY)

    result = await adapter_for(handler).embed(vc)

    assert (
        str(seen[0].url)
        == f"{BASE}/openai/deployments/embed-prod/embeddings?api-version=2024-10-21"
    )
    assert result.usage == Usage(input_tokens=3)


async def test_batch_uses_resource_level_files_and_batches():
    seen, handler = recorder(
        httpx.Response(200, json={"id": "file-1", "purpose": "batch"}),
        httpx.Response(200, json={"id": "batch_az", "status": "validating"}),
        httpx.Response(200, json={"id": "batch_az", "status": "in_progress"}),
        httpx.Response(200, json={"id": "batch_az", "status": "cancelling"}),
    )
    adapter = adapter_for(handler)

    batch_id = await adapter.submit_batch([("r1", call())], KEY)
    assert await adapter.poll_batch(batch_id, KEY) is None
    await adapter.cancel_batch(batch_id, KEY)

    upload, create, poll, cancel = seen
    assert str(upload.url) == f"{BASE}/openai/files?api-version=2024-10-21"
    line = json.loads(upload.content.split(b"\r\n\r\n")[-1].split(b"\r\n")[0])
    assert line["url"] == "/chat/completions"
    assert line["body"]["model"] == "gpt4o-prod"
    assert str(create.url) == f"{BASE}/openai/batches?api-version=2024-10-21"
    assert json.loads(create.content)["endpoint"] == "/chat/completions"
    assert str(poll.url) == f"{BASE}/openai/batches/batch_az?api-version=2024-10-21"
    assert cancel.method == "POST"
    assert str(cancel.url) == f"{BASE}/openai/batches/batch_az/cancel?api-version=2024-10-21"
    assert all(r.headers["api-key"] == KEY for r in seen)


async def test_a_batch_made_though_its_create_call_failed_is_looked_for_at_the_resource():
    """Azure's batch list, at the resource, with its api-version and the look's page."""
    made: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/files"):
            return httpx.Response(200, json={"id": "file-1", "purpose": "batch"})
        if request.method == "POST":
            made.append(
                {"id": "batch_az", "created_at": 2_000_000_000, **json.loads(request.content)}
            )
            return httpx.Response(504, text="Gateway Timeout")
        assert str(request.url) == f"{BASE}/openai/batches?api-version=2024-10-21&limit=100"
        return httpx.Response(200, json={"object": "list", "data": made, "has_more": False})

    adapter = adapter_for(handler)
    adapter.lookup_waits_s = (0.0,)
    assert await adapter.submit_batch([("r1", call())], KEY) == "batch_az"
    assert made[0]["metadata"]["relay_lane_nonce"]


async def test_rate_limit_reads_retry_after_ms():
    _, handler = recorder(
        httpx.Response(
            429,
            json={
                "error": {"code": "429", "message": "Requests have exceeded the token rate limit"}
            },
            headers={"retry-after-ms": "1500", "retry-after": "2"},
        )
    )
    with pytest.raises(VendorRateLimited) as err:
        await adapter_for(handler).chat(call())
    assert err.value.retry_after == 1.5
    assert err.value.message.startswith("azure: HTTP 429: Requests have exceeded")


async def test_auth_error_never_echoes_the_api_key():
    message = f"Access denied due to invalid subscription key {KEY}."
    _, handler = recorder(httpx.Response(401, json={"error": {"code": "401", "message": message}}))
    with pytest.raises(VendorAuthFailed) as err:
        await adapter_for(handler).chat(call())
    assert KEY not in err.value.message


@pytest.mark.parametrize(
    ("version", "base", "query"),
    [("v1", BASE, ""), (None, BASE + "/openai/v1", ""), ("preview", BASE, "?api-version=preview")],
)
async def test_the_v1_api_takes_openai_paths_and_the_deployment_in_the_body(version, base, query):
    seen, handler = recorder(
        httpx.Response(200, json=ANSWER),
        httpx.Response(200, json={"id": "file-1", "purpose": "batch"}),
        httpx.Response(200, json={"id": "batch_az", "status": "validating"}),
    )
    adapter = adapter_for(handler, version, base)
    await adapter.chat(call())
    await adapter.submit_batch([("r1", call())], KEY)

    chat, upload, create = seen
    assert str(chat.url) == f"{BASE}/openai/v1/chat/completions{query}"
    assert json.loads(chat.content)["model"] == "gpt4o-prod"
    assert chat.headers["api-key"] == KEY
    assert str(upload.url) == f"{BASE}/openai/v1/files{query}"
    assert str(create.url) == f"{BASE}/openai/v1/batches{query}"


async def test_a_content_filter_refusal_keeps_its_code_and_the_field_it_blamed():
    """Clients branch on Azure's ``content_filter`` code: it is not folded into a 400."""
    refusal = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure "
            "OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation"},
        }
    }
    _, handler = recorder(httpx.Response(400, json=refusal))
    with pytest.raises(ContentFiltered) as err:
        await adapter_for(handler).chat(call())
    body = err.value.openai_body()["error"]
    assert (body["code"], body["param"], body["type"]) == (
        "content_filter",
        "prompt",
        "invalid_request_error",
    )
    assert err.value.status == 400 and not err.value.retryable


async def test_a_key_the_vendor_echoes_in_the_blamed_field_is_struck_from_it_too():
    refusal = {"error": {"message": "bad key", "code": "invalid", "param": f"api-key {KEY}"}}
    _, handler = recorder(httpx.Response(400, json=refusal))
    with pytest.raises(Exception) as err:
        await adapter_for(handler).chat(call())
    assert KEY not in str(err.value.param) and "[redacted]" in str(err.value.param)  # type: ignore[attr-defined]


async def test_the_asynchronous_filter_s_annotations_never_reach_a_client() -> None:
    """Azure's asynchronous content filter sends choices of annotations alone (no delta,
    ids empty, even after the finish): clients reading deltas crash on those."""
    safe = {"hate": {"filtered": False, "severity": "safe"}}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def choice(delta: dict | None, finish: str | None = None) -> dict:
        given = {"index": 0, "finish_reason": finish}
        return given | ({"delta": delta} if delta is not None else {})

    offsets = {"check_offset": 0, "start_offset": 0, "end_offset": 5}
    note = {"content_filter_offsets": offsets, "content_filter_results": safe}
    events = [
        {"choices": [], "id": "", "object": "", "prompt_filter_results": [{"prompt_index": 0}]},
        {**head, "choices": [choice({"role": "assistant", "content": ""})]},
        {**head, "choices": [choice({"content": "Hello"})]},
        {**head, "choices": [choice(None, "stop")]},  # a finish without its delta
        {"id": "", "object": "", "created": 0, "model": "", "choices": [choice(None) | note]},
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}},
    ]
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    _, handler = recorder(httpx.Response(200, text=text))
    items = [i async for i in adapter_for(handler).stream(call())]
    chunks = [i for i in items if isinstance(i, dict)]
    assert all(c["id"] == "chatcmpl-1" for c in chunks)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert items[-1] == Usage(input_tokens=9, output_tokens=1)


async def test_the_prompt_filter_results_of_a_stream_reach_its_whole_answer() -> None:
    """Azure opens a stream with a chunk of no choice, its blank id, created and model
    and its verdict on the prompt (``prompt_filter_results``): the chunk goes, its
    verdict rides on the first chunk of the answer, so the whole answer assembled from
    the stream (what the cache keeps, what a non-streamed follower gets) has it, as the
    non-streamed answer does; the closing usage chunk is the stream's usage as before."""
    safe = {"hate": {"filtered": False, "severity": "safe"}}
    verdict = [{"prompt_index": 0, "content_filter_results": safe}]
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def said(delta: dict, finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**head, "choices": [choice | {"content_filter_results": safe}]}

    events = [
        {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": verdict},
        said({"role": "assistant", "content": ""}),
        said({"content": "Hi"}),
        said({}, "stop"),
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}},
    ]  # fmt: skip
    text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    _, handler = recorder(httpx.Response(200, text=text))

    *chunks, usage = [i async for i in adapter_for(handler).stream(call())]

    assert usage == Usage(input_tokens=9, output_tokens=1)
    assert [c.get("prompt_filter_results") for c in chunks] == [verdict, None, None]
    assert all(c["id"] == "c1" and c["model"] == "gpt-4o" for c in chunks)
    assert faithful_chunks(chunks)
    whole = assemble_chunks(chunks)
    assert whole["prompt_filter_results"] == verdict
    assert (whole["id"], whole["model"]) == ("c1", "gpt-4o")
    assert whole["choices"][0]["message"]["content"] == "Hi"
