"""The HTTP protocol the gateway serves on: uvicorn's httptools one, with request heads
bounded in size and in time.

uvicorn keeps a request's head (request line and headers) in memory until it ends, with
no limit on its size nor on how long it may take to arrive, and all of it before the
edge can refuse a request without a key: three connections sending 200 MB headers that
never end took 600 MB from a gateway, and one that trickles a byte a second holds its
connection for ever.  Here a head past ``MAX_HEAD_BYTES`` gets a 431, and one not
finished within ``HEAD_TIMEOUT_S`` of its first byte a 408, and the connection closes.
(nginx allows 32 KB of headers by default, Node.js 16 KB.)
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0


class BoundedHead(HttpToolsProtocol):
    _reading_head = False
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
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
        self.transport.close()
