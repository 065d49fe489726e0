"""The hot endpoints, answered at the edge of the gateway before FastAPI routes anything.

Chat, embeddings, completions, messages and responses are nearly all of the traffic, and FastAPI's
routing, dependency injection and middleware cost more CPU per request than the relay's
own work does (a cache hit took twice as long through them).  The edge does only what those
requests need: read the body, resolve the relay key, and ask the relay, using the routes'
own validation and rendering (``chat_fields``, ``render``...), so an answer from the edge
is the one the routes would send.  Whatever it cannot take as it stands (bad JSON, a body
that fails validation, a missing or unknown key, a chunked or oversized upload) goes on
to FastAPI untouched, whose routes answer it or send the proper error.  Errors while
answering are sent in the vendor's error body, exactly as the routes would.

The edge also refuses a write without a known relay key before reading its body, and
holds every request body to ``max_body`` bytes: one that says it is larger gets 413
before a byte of it is read, and a chunked upload is read here, up to the limit, before
anything behind the edge sees it.  And it times every body as it comes in: one that goes
``BODY_TIMEOUT_S`` without a byte, or comes slower than ``BODY_MIN_RATE`` past that
long, before anything was answered, gets 408 in the endpoint's error body (uvicorn sets
no timer while a body arrives, so a client could otherwise hold its connection, and
what it sent so far, for ever).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import anthropic_routes, openai_routes, responses_routes
from gateway.auth import Caller, caller, known_caller
from gateway.errors import error_response
from gateway.relay import Answer, Options, Relay
from schemas.envelope import Endpoint
from schemas.errors import RelayError, RequestTimeout, RequestTooLarge
from schemas.formats.responses import in_responses_words

log = logging.getLogger("relay.gateway")
MAX_BODY = 256 * 1024  # larger requests are rare and go straight to FastAPI
# The longest a request body may go without a byte: as long as a request head may take
# (http_head.HEAD_TIMEOUT_S; nginx's client_body_timeout is 60 s).  Past that long, a body
# must also have come at BODY_MIN_RATE bytes a second on average (Apache's default).
BODY_TIMEOUT_S = 30.0
BODY_MIN_RATE = 500.0


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
    "/v1/responses": ("chat", responses_routes.neutral_request, responses_routes.render),
}


class Edge:
    """Plain ASGI middleware: the hot endpoints here, everything else to the app behind."""

    def __init__(
        self,
        app: ASGIApp,
        max_body: int = 32 * 1024 * 1024,
        body_timeout_s: float | None = None,
        body_min_rate: float | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout_s = BODY_TIMEOUT_S if body_timeout_s is None else body_timeout_s
        self.body_min_rate = BODY_MIN_RATE if body_min_rate is None else body_min_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if not scope.get("path", "").startswith("/v1/"):
            # No route outside /v1 takes a body: not read (a chunked upload to /healthz
            # would otherwise be buffered, up to the limit, for a 405).
            await self.app(scope, receive, send)
            return
        who = known_caller(Request(scope))
        if who is None:
            # Refused before a byte of the body is read (FastAPI reads and parses a
            # route's body before its key check): the routes' own 401 or 429, audited.
            try:
                await caller(Request(scope))
            except RelayError as err:
                await error_response(Request(scope), err)(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await self._too_large(scope, receive, send)
            return
        route = ROUTES.get(scope.get("path", "")) if scope["method"] == "POST" else None
        clock = _BodyClock(receive, send, self.body_timeout_s, self.body_min_rate)
        if length is not None and (route is None or length > MAX_BODY):
            # Sized within the limit: not ours to read, but timed all the same.
            await self.app(scope, clock.receive, clock.send)
            return
        try:  # a hot route's small body, or any chunked upload (held to the limit here)
            raw = await _read_body(clock.receive, self.max_body)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        except BodyStalled as stalled:
            timed_out = RequestTimeout(stalled.detail)
            await error_response(Request(scope), timed_out)(scope, receive, send)
            return
        if raw is None:
            return  # the client left before it finished sending: nobody to answer
        response = await self._answer(scope, raw, route, who) if route and who else None
        if response is None:
            await self.app(scope, _replay(raw, receive), send)
            return
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = RequestTooLarge(f"the request body is over the relay's {self.max_body} bytes")
        await error_response(Request(scope), err)(scope, receive, send)

    async def _answer(self, scope: Scope, raw: bytes, route: Route, who: Caller) -> Response | None:
        endpoint, to_relay, render = route
        request = Request(scope)
        relay: Relay = request.app.state.relay
        if scope["path"] != "/v1/messages" and not _json_type(request.headers.get("content-type")):
            return None  # the OpenAI routes refuse a body not sent as JSON: let them say so
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                return None
            opts = Options.from_headers(request.headers)
            relay_body = to_relay(body)
        except Exception:  # the routes will say what is wrong, in the vendor's error body
            return None
        try:
            return render(await relay.answer(who, endpoint, relay_body, opts), body)
        except RelayError as err:
            if scope["path"] == "/v1/responses":
                in_responses_words(err, body)  # the item it came from, as the route says it
            return error_response(request, err)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            return error_response(request, RelayError("internal error; it has been logged"))


def _json_type(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``: what FastAPI's strict check accepts."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _content_length(scope: Scope) -> int | None:
    """The declared body size; None for a chunked upload (or a malformed header, which
    is then read and held to the limit like one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class _BodyTooLarge(Exception):
    pass


class BodyStalled(HTTPException):
    """A request body that stopped coming in, or came too slowly.  An HTTPException
    because FastAPI passes one raised while it reads a body on as it is (any other
    becomes its 400), to the handler that answers it as ``RequestTimeout``."""

    def __init__(self, why: str) -> None:
        super().__init__(408, f"the request body {why}")


class _BodyClock:
    """A request's ``receive``, timed while its body comes in and nothing has been
    answered: ``timeout_s`` at most without a message, and, past its first ``timeout_s``,
    ``min_rate`` bytes a second on average (Apache's mod_reqtimeout ``MinRate``: a byte
    every few seconds would otherwise hold a connection for hours).  Once an answer has
    begun, what is left of its body is the protocol's to bound (http_head closes a
    connection whose body outlasts its answer)."""

    def __init__(self, receive: Receive, send: Send, timeout_s: float, min_rate: float) -> None:
        self._receive = receive
        self._send = send
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self._timing = True
        self._received = 0
        self._started: float | None = None

    async def receive(self) -> Message:
        if not self._timing:
            return await self._receive()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._started is None:
            self._started = now
        earned = self._received / self.min_rate if self.min_rate > 0 else math.inf
        by_rate = self._started + self.timeout_s + earned
        wait = min(self.timeout_s, by_rate - now)
        try:
            # (A message already here is taken even past the deadline: it never waits.)
            async with asyncio.timeout(max(0.0, wait)):
                message = await self._receive()
        except TimeoutError:
            why = (
                f"came too slowly: under {self.min_rate:g} bytes a second"
                if wait < self.timeout_s
                else f"stopped coming in: nothing for {self.timeout_s:g} s"
            )
            raise BodyStalled(why) from None
        self._received += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._timing = False  # the body is all in (or the client gone)
        return message

    async def send(self, message: Message) -> None:
        self._timing = False
        await self._send(message)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when the client disconnected before sending all of it;
    past ``limit`` bytes, reading stops with ``_BodyTooLarge``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _BodyTooLarge
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the live channel."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
