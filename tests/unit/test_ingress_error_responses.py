"""Error responses as clients read them: OpenAI's ``type`` for a bad key and an unknown
model (Anthropic's body keeps its own), and ``x-relay-cache`` on every response of the
endpoints the relay answers, errors included."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.edge import ROUTES
from gateway.errors import ANSWER_PATHS
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import RelayError, VendorUnavailable
from tests.support.gateway import AUTH, client, gateway_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-haiku", "max_tokens": 5, "messages": CHAT["messages"]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def failing(err: RelayError, *, coalesced: bool = False) -> Any:
    """A worker that answers every request with ``err`` (as a follower of another's
    call, when ``coalesced``)."""

    def script(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
        event = ReplyEvent(
            correlation_id=env.correlation_id,
            kind="error",
            error=err.to_dict(),
            coalesced=coalesced,
        )
        return [(0.0, event)]

    return script


def anonymous(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://relay")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
    ],
)
@pytest.mark.parametrize("key", [None, "rk-guessed"])
async def test_a_bad_key_is_openai_s_invalid_request_error(
    method: str, path: str, body: Any, key: str | None
) -> None:
    app, _ = gateway_app()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with anonymous(app) as http:
        reply = await http.request(method, path, json=body, headers=headers)
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {**CHAT, "model": "no-such-model"}),
        ("POST", "/v1/responses", {"model": "no-such-model", "input": "hi"}),
        ("GET", "/v1/models/no-such-model", None),
    ],
)
async def test_an_unknown_model_is_openai_s_invalid_request_error(
    method: str, path: str, body: Any
) -> None:
    app, _ = gateway_app()
    async with client(app) as http:
        reply = await http.request(method, path, json=body)
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model_not_found")


async def test_anthropic_s_body_keeps_its_own_types_for_both() -> None:
    app, _ = gateway_app()
    async with anonymous(app) as http:
        bad_key = await http.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC)
        no_model = await http.post(
            "/v1/messages", json={**MESSAGES, "model": "nope"}, headers={**ANTHROPIC, **AUTH}
        )
    assert (bad_key.status_code, bad_key.json()["error"]["type"]) == (401, "authentication_error")
    assert (no_model.status_code, no_model.json()["error"]["type"]) == (404, "not_found_error")


async def test_every_error_of_an_answering_endpoint_says_x_relay_cache() -> None:
    """A refusal before any look-up (401 at the edge, a 400 header, the throttle's 429)
    and a miss that failed at the vendor (502, 429) were never answered from the cache:
    ``miss``."""
    app, _ = gateway_app()
    async with anonymous(app) as http:
        no_key = await http.post("/v1/chat/completions", json=CHAT)
        for i in range(40):  # past the address's allowance of refused keys
            await http.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": f"g{i}"})
        throttled = await http.post("/v1/messages", json=MESSAGES, headers={"x-api-key": "g"})
    app, _ = gateway_app(failing(VendorUnavailable("boom")))
    async with client(app) as http:
        bad_header = await http.post(
            "/v1/chat/completions", json=CHAT, headers={"x-relay-priority": "urgent"}
        )
        vendor = await http.post("/v1/chat/completions", json=CHAT)
        vendor_stream = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        anthropic_vendor = await http.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC)
    app, _ = gateway_app(failing(RelayError.from_dict({"code": "vendor_rate_limited"})))
    async with client(app) as http:
        vendor_429 = await http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "x"})
    seen = {
        (r.status_code, r.headers.get("x-relay-cache"))
        for r in (no_key, throttled, bad_header, vendor, vendor_stream, anthropic_vendor)
    }
    assert seen == {(401, "miss"), (429, "miss"), (400, "miss"), (502, "miss")}
    assert (vendor_429.status_code, vendor_429.headers.get("x-relay-cache")) == (429, "miss")


async def test_a_caller_that_shared_a_failed_call_hears_it_was_coalesced() -> None:
    app, _ = gateway_app(failing(VendorUnavailable("boom"), coalesced=True))
    async with client(app) as http:
        reply = await http.post("/v1/chat/completions", json=CHAT)
        responses = await http.post("/v1/responses", json={"model": "gpt-4o-mini", "input": "hi"})
    assert (reply.status_code, reply.headers["x-relay-cache"]) == (502, "coalesced")
    assert (responses.status_code, responses.headers["x-relay-cache"]) == (502, "coalesced")


async def test_other_endpoints_say_no_cache_outcome_on_errors_as_on_answers() -> None:
    """The model list (as files and batches) never comes from the cache: no header, on
    an answer or an error."""
    app, _ = gateway_app()
    async with anonymous(app) as http:
        refused = await http.get("/v1/models")
    async with client(app) as http:
        listed = await http.get("/v1/models")
        missing = await http.get("/v1/models/no-such-model")
    assert [r.status_code for r in (refused, listed, missing)] == [401, 200, 404]
    assert all("x-relay-cache" not in r.headers for r in (refused, listed, missing))


def test_every_endpoint_the_edge_answers_is_an_answering_path() -> None:
    assert set(ROUTES) <= ANSWER_PATHS
