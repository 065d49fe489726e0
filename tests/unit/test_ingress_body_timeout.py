"""A request body that stops coming in is a 408 in the endpoint's error body, whoever
reads it: the edge (a hot route's small or chunked body) or a FastAPI route (a large
body, a file upload).  The real app in-process, its body timeout made tiny; a client
that sends part of its body and then nothing (nor leaves)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

import gateway.edge
from tests.support.gateway import AUTH, gateway_app

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'


async def post(path: str, parts: list[bytes], **headers: str) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of the answer to a POST whose body is ``parts``, the
    last of them said to be followed by more that never comes (unless ``more`` is
    ``no``)."""
    app, _ = gateway_app()
    done = headers.pop("more", "") == "no"
    raw = [(k.encode(), v.encode()) for k, v in {**AUTH, **headers}.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw, "client": ("127.0.0.1", 1),
        "server": ("relay", 80), "state": {},
    }  # fmt: skip
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in parts]
    if done:
        messages[-1]["more_body"] = False

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # never set: quiet, and still connected
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], head, orjson.loads(body) if body.startswith(b"{") else body


@pytest.fixture(autouse=True)
def tiny_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.edge, "BODY_TIMEOUT_S", 0.01)


LARGE = str(gateway.edge.MAX_BODY + 1)  # sized past what the edge reads: FastAPI's to read


@pytest.mark.parametrize(
    ("path", "headers", "error"),
    [
        # The edge's own read: chunked, or small and sized.
        ("/v1/chat/completions", {}, {"type": "invalid_request_error", "code": "request_timeout"}),
        ("/v1/embeddings", {"content-length": "500"}, {"code": "request_timeout"}),
        # A FastAPI route's read (a pydantic body; one the route reads itself).
        ("/v1/chat/completions", {"content-length": LARGE}, {"code": "request_timeout"}),
        ("/v1/responses", {"content-length": LARGE}, {"code": "request_timeout"}),
        ("/v1/messages", {"content-length": LARGE}, {"type": "timeout_error"}),
        ("/v1/batches", {"content-length": "500"}, {"code": "request_timeout"}),
    ],
)
async def test_a_body_that_stops_coming_in_is_a_408_in_the_endpoint_s_error_body(
    path: str, headers: dict[str, str], error: dict[str, str]
) -> None:
    status, head, body = await post(
        path, [CHAT[:20]], **{"content-type": "application/json", **headers}
    )
    assert status == 408
    assert error.items() <= body["error"].items()
    assert "stopped coming in" in body["error"]["message"]
    assert ("x-relay-cache" in head) == (path != "/v1/batches"), "as the endpoint's answers"


async def test_a_file_upload_that_stops_coming_in_is_a_408() -> None:
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + b"x" * 2000
    )
    status, _, body = await post(
        "/v1/files",
        [part],
        **{"content-type": "multipart/form-data; boundary=XyZ", "content-length": "500000"},
    )
    assert (status, body["error"]["code"]) == (408, "request_timeout")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_large_body_sent_whole_is_answered_however_long_the_answer_takes(
    stream: bool,
) -> None:
    """Only a body's own silence is timed: once it is all in, a route waiting on the
    relay, or a streamed answer listening for the client to leave, is not cut short."""
    padding = b" " * gateway.edge.MAX_BODY
    body = CHAT[:-1] + (b', "stream": true}' if stream else b"}") + padding
    status, head, _ = await post(
        "/v1/chat/completions",
        [body[:1000], body[1000:]],
        more="no",
        **{"content-type": "application/json", "content-length": str(len(body))},
    )
    assert status == 200 and head["x-relay-cache"] == "miss"
