"""A vendor key quoted masked is struck whatever the vendor's shape of it (DeepSeek's
``****d569``, xAI's ``xa***Ab``, not only ``sk-...****abcd``), and xAI's 400 for a wrong
key benches that key and tries the pool's next one, as a 401 does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from agents.adapters.http import redact, status_error
from agents.adapters.registry import make_adapter
from agents.dispatch import Dispatcher
from agents.keys import KeyPool
from schemas.config import Candidate, VendorConfig
from schemas.errors import VendorAuthFailed, VendorBadRequest
from tests.support.envelopes import request_envelope
from tests.unit.test_dispatch import real_vendors

DEEPSEEK = "Authentication Fails, Your api key: ****d569 is invalid"
XAI = "Incorrect API key provided: xa***Ab. You can obtain an API key from https://console.x.ai."
XAI_BODY = {"code": "Client specified an invalid argument", "error": XAI}


@pytest.mark.parametrize(
    ("said", "struck"),
    [
        (DEEPSEEK, "Your api key: [redacted] is invalid"),
        (XAI, "provided: [redacted]. You can obtain"),
        ("Incorrect API key provided: sk-proj-****abcd. You can", "provided: [redacted]. You"),
        ("invalid x-api-key: sk-ant-api03-***...***wxyz", "x-api-key: [redacted]"),
        ("key sk-abc12***…wxyz refused", "key [redacted] refused"),
        ("key ****Njk= refused", "key [redacted] refused"),
        ("key=****abcd, refused", "key=[redacted], refused"),
        ('{"key": "xa***Ab"}', '{"key": "[redacted]"}'),
    ],
)
def test_a_masked_key_of_any_shape_is_struck(said: str, struck: str) -> None:
    assert struck in redact(said, "")


@pytest.mark.parametrize(
    "text",
    [
        "**bold** stays bold",
        "***both*** stays both",
        "a lone *** rule, and ***...*** too",
        "a * b and 2 ** 3",
        "no stars at all: sk-proj-abcd",
    ],
)
def test_ordinary_text_with_stars_is_left_as_it_is(text: str) -> None:
    assert redact(text, "") == text


def test_a_long_text_of_dotted_tokens_is_redacted_in_linear_time() -> None:
    """A vendor's error text is untrusted: no backtracking blow-up on "a...a...a..."."""
    started = time.monotonic()
    redact("a..." * 30000 + "xa***Ab", "")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"error": {"message": DEEPSEEK, "type": "authentication_error"}}),
        (400, XAI_BODY),
    ],
    ids=["deepseek-401", "xai-400"],
)
def test_deepseek_s_and_xai_s_refusals_are_the_key_s_failure_with_the_key_struck(
    status: int, body: Any
) -> None:
    request = httpx.Request("POST", "https://v.test/v1/chat", headers={"authorization": "Bearer k"})
    err = status_error(httpx.Response(status, json=body, request=request), "openai")
    assert isinstance(err, VendorAuthFailed) and err.retryable and err.status == 502
    assert "d569" not in err.message and "xa***" not in err.message
    assert "[redacted]" in err.message


def test_another_400_stays_the_client_s() -> None:
    body = {"error": {"message": "messages: Incorrect API key provided is no role"}}
    err = status_error(httpx.Response(400, json=body), "openai")
    assert isinstance(err, VendorBadRequest)


_SSE = {"content-type": "text/event-stream"}


@pytest.mark.parametrize(
    ("stream", "status", "body", "headers"),
    [
        (False, 401, {"error": {"message": DEEPSEEK}}, None),
        (False, 400, XAI_BODY, None),
        (False, 200, {"error": {"message": DEEPSEEK}}, None),
        (True, 200, f"data: {json.dumps({'error': {'message': XAI}})}\n\n", _SSE),
    ],
    ids=["deepseek-401", "xai-400", "deepseek-200-error", "xai-stream"],
)
async def test_deepseek_s_and_xai_s_masked_key_reaches_no_client_on_any_path(
    stream: bool, status: int, body: Any, headers: Any
) -> None:
    if isinstance(body, str):
        answer = httpx.Response(status, text=body, headers=headers)
    else:
        answer = httpx.Response(status, json=body)
    dispatch, _ = real_vendors(openai=answer)
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream},
        stream=stream,
    )
    forward = (lambda chunk: asyncio.sleep(0)) if stream else None
    out = await dispatch.run(env, [Candidate(vendor="openai", model="m")], forward)
    assert out.error is not None
    said = str(out.error.to_dict())
    assert "[redacted]" in said and "d569" not in said and "***" not in said


async def test_xai_s_400_for_a_wrong_key_benches_it_and_the_next_key_answers() -> None:
    """As a 401 does: the pool learns of it through VendorAuthFailed."""
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    keys: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer xai-wrong-0000000069":
            return httpx.Response(400, json=XAI_BODY)
        return httpx.Response(200, json=answer)

    http = httpx.AsyncClient(transport=httpx.MockTransport(route))
    adapter = make_adapter(VendorConfig(kind="openai", base_url="http://xai.test/v1"), http)
    pool = KeyPool(["xai-wrong-0000000069", "xai-right-1111111111"])
    dispatch = Dispatcher({"xai": adapter}, {"xai": pool}, lambda ev: asyncio.sleep(0))
    env = request_envelope(
        deadline_ms=int((time.time() + 5) * 1000),
        body={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    out = await dispatch.run(env, [Candidate(vendor="xai", model="grok")], None)
    assert out.error is None and out.body is not None
    assert keys == ["Bearer xai-wrong-0000000069", "Bearer xai-right-1111111111"]
    assert pool.pick() == (1, "xai-right-1111111111"), "the wrong key sits out"
    assert pool.pick() == (1, "xai-right-1111111111")
