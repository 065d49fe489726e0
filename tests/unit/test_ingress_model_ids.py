"""``/v1/models`` answers carry a request id, as every other answer does (the SDKs'
``_request_id``, one to quote in a report)."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

from tests.support.gateway import DEMO_KEY, client, gateway_app

ANTHROPIC = {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/gpt-4o-mini"])
@pytest.mark.parametrize("shape", [{}, ANTHROPIC])
async def test_a_model_answer_carries_a_request_id(path: str, shape: dict[str, str]) -> None:
    app, _ = gateway_app()
    async with client(app) as http:
        answer = await http.get(path, headers=shape)
        traced = await http.get(path, headers={**shape, "x-relay-trace-id": "mine-1"})
    assert answer.status_code == 200
    assert answer.headers["request-id"] == answer.headers["x-request-id"] != ""
    assert traced.headers["request-id"] == traced.headers["x-request-id"] == "mine-1"


async def test_the_sdks_read_the_model_answers_request_id() -> None:
    app, _ = gateway_app()
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://relay")
    oa = openai.AsyncOpenAI(base_url="http://relay/v1", api_key=DEMO_KEY, http_client=http)
    assert (await oa.models.retrieve("gpt-4o-mini"))._request_id
    claude = anthropic.AsyncAnthropic(base_url="http://relay", api_key=DEMO_KEY, http_client=http)
    assert (await claude.models.retrieve("claude-haiku"))._request_id
