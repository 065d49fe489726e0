"""The HTTP protocol the gateway serves on: uvicorn's httptools one, with request heads
bounded in size and in time, and no connection left open without a timer on it.

uvicorn keeps a request's head (request line and headers) in memory until it ends, with
no limit on its size nor on how long it may take to arrive, and all of it before the
edge can refuse a request without a key: three connections sending 200 MB headers that
never end took 600 MB from a gateway, and one that trickles a byte a second holds its
connection for ever.  Here a head past ``MAX_HEAD_BYTES`` gets a 431, and one not
finished within ``HEAD_TIMEOUT_S`` of its first byte a 408, and the connection closes
(lingering, as below).
(nginx allows 32 KB of headers by default, Node.js 16 KB.)

uvicorn also times nothing on a connection before its first byte, nor once it has answered
a request whose body it had not yet received (the edge refuses a write without a key, or
one over the size limit, before reading its body; a 404 or 405 never reads it): the rest of
that body is thrown away as it comes, and its first byte cancels the keep-alive timer the
answer armed, so one byte now and then, or none at all, held a connection for ever.  Here a
fresh connection is idle no longer than one between requests (uvicorn's keep-alive
timeout), and an answer sent before its request's body ended says ``connection: close``;
the rest of that body is then read and dropped, unparsed, for at most the keep-alive
timeout before the connection closes (closing at once could reset the connection under a
client still uploading, and take the answer with it: what nginx calls a lingering close).
A body still coming in before any answer is timed by the edge (``gateway.edge``: a 408
for one that stops, or trickles in), which answers in the endpoint's own error body.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0


class BoundedHead(HttpToolsProtocol):
    _reading_head = False
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None
    _lingering = False  # answered before its body ended: what comes now is dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Idle before its first request as long as between two: the keep-alive timer,
        # which the first byte cancels (and the head timer then takes over).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self.app = self._closing_early(self.app)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            # The rest of a body already answered, dropped without a look, and without
            # cancelling the keep-alive timer the answer armed, which ends the linger
            # (as the client's close does).
            return
        was_reading = self._reading_head
        super().data_received(data)
        # Counted once parsed, and only a read the head was open across: one that
        # finished a head (and began the body) is the body's, and one that began the
        # next pipelined request may hold the end of the last one's body.  A head is
        # thus held to the limit plus one read (asyncio reads 256 KiB at most).
        if not self._reading_head or self.transport.is_closing():
            return
        if was_reading:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, b"Request Header Fields Too Large", "request head too large")
        elif self._head_timer is None:
            # Timed only once a head outlasts the read it began in: most heads come
            # whole in one, and need no timer set and cancelled.
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timed_out)

    def _closing_early(self, app: ASGIApp) -> ASGIApp:
        """``app``, with ``connection: close`` on an answer that starts before its
        request's body has all come in, and a linger if it ends before then too."""

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            unread: RequestResponseCycle | None = None

            async def send_closing(message: Message) -> None:
                nonlocal unread
                if message["type"] == "http.response.start":
                    unread = self._unread(scope)
                    if unread is not None:
                        headers = [*message.get("headers", ()), (b"connection", b"close")]
                        message = {**message, "headers": headers}
                elif unread is not None and unread.more_body and not message.get("more_body"):
                    # uvicorn closes a connection: close one as soon as its answer is
                    # out, under a body still coming in; it lingers instead (and nothing
                    # more is parsed on it: no request after this one is served).
                    unread.keep_alive, self._lingering = True, True
                await send(message)

            await app(scope, receive, send_closing)

        return answer

    def _unread(self, scope: Scope) -> RequestResponseCycle | None:
        """The request of ``scope`` if its body has not all come in yet: the latest one
        parsed, its body not ended (a pipelined request behind it means it had)."""
        cycle = self.cycle
        return cycle if cycle is not None and cycle.scope is scope and cycle.more_body else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def _head_done(self) -> None:
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse(408, b"Request Timeout", "request head not sent in time")

    def _refuse(self, status: int, reason: bytes, text: str) -> None:
        self._head_done()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while the last answer still goes out: an answer written
            # now would land inside that one's bytes.
            self.transport.close()
            return
        body = text.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        # A lingering close, as for a body answered early: the client may still be
        # sending its head, and a close now would meet those bytes with a reset that can
        # take the answer with it.  Our side ends (FIN after the answer); what comes is
        # dropped until the client closes, or the keep-alive timeout.
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.timeout_keep_alive, self.transport.close)
