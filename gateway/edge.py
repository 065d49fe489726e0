"""Cache hits answered at the very edge of the gateway, before FastAPI routes the request.

A hit needs no routing, no dependency injection and no Kafka: read the body, resolve the
relay key, look the request up, send the stored answer.  Run through FastAPI a hit cost
about twice the CPU of the hit itself, which on a small machine is the difference between
a 3 ms and a 2 ms answer.  The edge uses the routes' own validation and rendering
(``chat_fields``, ``render``...), so a hit looks exactly like one the routes would send;
anything it is unsure of (bad JSON, an unknown key, a miss) goes on to FastAPI unchanged,
which answers it or sends the proper error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import anthropic_routes, openai_routes
from gateway.auth import caller
from gateway.relay import EDGE_MISSED, Answer, Options, Relay
from schemas.envelope import Endpoint

MAX_BODY = 256 * 1024  # larger requests are rare and go straight to FastAPI


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    return openai_routes.chat_fields(openai_routes.ChatBody.model_validate(body))


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    return openai_routes.EmbeddingsBody.model_validate(body).model_dump(exclude_unset=True)


def _completions(body: dict[str, Any]) -> dict[str, Any]:
    return openai_routes.CompletionsBody.model_validate(body).model_dump(exclude_unset=True)


Route = tuple[
    Endpoint,
    Callable[[dict[str, Any]], dict[str, Any]],  # client body -> the relay's body
    Callable[[Answer, dict[str, Any]], Response],  # answer (+ client body) -> response
]
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": ("chat", _chat, openai_routes.render),
    "/v1/embeddings": ("embeddings", _embeddings, openai_routes.render),
    "/v1/completions": ("completions", _completions, openai_routes.render),
    "/v1/messages": ("chat", anthropic_routes.neutral_request, anthropic_routes.render),
}


class EdgeCache:
    """Plain ASGI middleware: cache hits here, everything else to the app behind."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or not _small(scope):
            await self.app(scope, receive, send)
            return
        raw, rest = await _read_body(receive)
        response = await self._hit(scope, raw, route)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(raw, rest, receive), send)

    async def _hit(self, scope: Scope, raw: bytes, route: Route) -> Response | None:
        endpoint, to_relay, render = route
        request = Request(scope)
        relay: Relay = request.app.state.relay
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                return None
            opts = Options.from_headers(request.headers)
            if opts.cache != "use":
                return None
            who = await caller(request)
            relay_body = to_relay(body)
            answer = await relay.cached(who, endpoint, relay_body, opts)
        except Exception:  # the routes will say what is wrong, in the vendor's error body
            return None
        if answer is None:
            scope.setdefault("state", {})[EDGE_MISSED] = True
            return None
        return render(answer, body)


def _small(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) <= MAX_BODY
    return False  # chunked upload: leave it to FastAPI


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    """The whole body, and the message that ended reading early (a disconnect), if any."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), message
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), None


def _replay(body: bytes, rest: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the live channel."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if rest is not None:
        pending.append(rest)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
