"""The worker's vendor client against a real local HTTP server: no state between calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from agents.adapters.http import open_stream, send, vendor_client


@pytest.fixture
async def vendor() -> AsyncIterator[tuple[str, list[str | None]]]:
    """A server that sets a cookie on every answer and records the Cookie header it got."""
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("cookie"))
        resp = web.json_response({"ok": True})
        resp.set_cookie("__cf_bm", "tenant-a-session", path="/")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    # A host name, not an IP: aiohttp keeps no cookies for IP addresses by default.
    yield f"http://localhost:{port}/v1/chat/completions", seen
    await runner.cleanup()


async def test_a_cookie_set_by_a_vendor_is_never_sent_on_a_later_call(
    vendor: tuple[str, list[str | None]],
) -> None:
    url, seen = vendor
    client = vendor_client(5.0)
    try:
        for _ in range(3):
            resp = await client.post(url, json={})
            assert resp.status_code == 200 and resp.json() == {"ok": True}
            assert "__cf_bm" in resp.headers["set-cookie"]  # the vendor did set one
    finally:
        await client.aclose()
    assert seen == [None, None, None]
    assert not list(client.cookies.jar)


@pytest.mark.parametrize(("given", "connect"), [(60.0, 5.0), (2.0, 2.0)])
async def test_a_calls_time_limit_keeps_the_short_connect_limit_inside_it(
    given: float, connect: float
) -> None:
    """A call's own timeout (its remaining deadline) must not stretch the connect limit:
    a vendor host that is down fails in seconds, and the next candidate gets the rest."""
    seen: list[dict[str, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await send(client, "POST", "http://vendor.test/v1/x", vendor="v", timeout=given)
        async with open_stream(
            client, "POST", "http://vendor.test/v1/x", vendor="v", timeout=given
        ):
            pass
    limits = {"connect": connect, "read": given, "write": given, "pool": given}
    assert seen == [limits, limits]


@pytest.mark.parametrize(
    "said",
    [
        "Incorrect API key provided: sk-proj-****abcd. You can find your API key at ...",
        "invalid x-api-key: sk-ant-api03-***...***wxyz",
    ],
)
def test_a_vendor_quoting_the_key_masked_shows_the_client_none_of_it(said: str) -> None:
    """Vendors quote a refused key masked, its last characters shown: still part of the
    operator's key, and no client of the relay sees them."""
    from agents.adapters.http import status_error

    request = httpx.Request("POST", "https://v.test/v1/chat", headers={"x-api-key": "k" * 12})
    resp = httpx.Response(401, json={"error": {"message": said}}, request=request)
    err = status_error(resp, "v")
    assert "abcd" not in err.message and "wxyz" not in err.message
    assert "[redacted]" in err.message and err.status == 502


def test_an_openai_vendor_s_400_code_is_carried_for_openai_clients() -> None:
    """OpenAI's ``context_length_exceeded`` (which agents branch on to trim history) is
    what an OpenAI-format client is told; the relay's own stable code stays for metrics,
    the ledger and routing, and both cross Kafka."""
    from agents.adapters.http import status_error
    from schemas.errors import RelayError, VendorBadRequest

    said = {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    err = status_error(httpx.Response(400, json=said), "openai")
    assert isinstance(err, VendorBadRequest) and err.code == "vendor_bad_request"
    assert err.openai_body()["error"]["code"] == "context_length_exceeded"
    again = RelayError.from_dict(err.to_dict())
    assert type(again) is VendorBadRequest and again.code == "vendor_bad_request"
    assert (again.vendor_code, again.param) == ("context_length_exceeded", "messages")


def test_an_anthropic_vendor_s_error_type_is_no_openai_code() -> None:
    from agents.adapters.http import status_error

    said = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
    err = status_error(httpx.Response(400, json=said), "anthropic")
    assert err.vendor_code is None and err.openai_body()["error"]["code"] == "vendor_bad_request"


@pytest.mark.parametrize("code", ["see https://x.test/why?key=1", "k" * 12, "a" * 65])
def test_a_vendor_code_that_is_no_identifier_or_quotes_the_key_is_not_carried(code: str) -> None:
    from agents.adapters.http import status_error

    request = httpx.Request("POST", "https://v.test/v1/chat", headers={"api-key": "k" * 12})
    said = {"error": {"message": "bad", "code": code}}
    err = status_error(httpx.Response(400, json=said, request=request), "v")
    assert err.vendor_code is None and err.openai_code == "vendor_bad_request"
