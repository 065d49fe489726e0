"""The gateway's audit trail: events go to the audit topic with floods folded.

Refusals come in floods (a script trying keys), so identical events within a window fold
(``tables.folding``): the first goes out at once, and when the window closes one line
with ``repeats`` says how many more came.  Stopping reports every count still open.
A refused caller's address counts as the refusal throttle counts it: an IPv6 host picks
a fresh address in its /64 for every try as easily as it makes up a key.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from gateway.auth import client_key
from schemas.envelope import AuditEvent, now_ms
from tables.folding import Folded, Folder

log = logging.getLogger("relay.gateway")
AUDIT_WINDOW_S = 10.0


class AuditTrail:
    def __init__(
        self,
        send: Callable[[AuditEvent], Awaitable[None]],
        *,
        window_s: float = AUDIT_WINDOW_S,
        max_open: int = 10_000,
    ) -> None:
        self.folder: Folder[AuditEvent] = Folder(window_s, max_open)
        self._send = send
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._sending: set[asyncio.Future[None]] = set()

    async def record(self, event: AuditEvent) -> None:
        closes = self.folder.offer(signature(event), event, time.monotonic(), group(event))
        if closes is None:
            await self._send(event)
        else:
            self._report_at(closes)

    async def close(self) -> None:
        """Send every folded count now, whether or not its window has closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        await asyncio.gather(*self._sending, return_exceptions=True)
        for folded in self.folder.due(math.inf):
            await self._send(summary(folded))

    def _report_at(self, when: float) -> None:
        """Report at ``when`` (monotonic), unless a report is due sooner anyway."""
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        delay = max(0.0, when - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._report)

    def _report(self) -> None:
        self._timer, self._timer_at = None, math.inf
        for folded in self.folder.due(time.monotonic()):
            task = asyncio.ensure_future(self._send(summary(folded)))
            self._sending.add(task)
            task.add_done_callback(self._sent)
        closes = self.folder.next_close()
        if closes is not None:
            self._report_at(closes)

    def _sent(self, task: asyncio.Future[None]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an audit summary line could not be sent: %s", task.exception())


def signature(event: AuditEvent) -> Hashable:
    """What makes two audit events the same, for folding: all but time and fingerprint
    (a script trying keys presents a new one each time), and, for a refusal of a caller
    not known, the path (anyone can make up a new one for every try, which would make
    every refusal a line of its own; the summary keeps the first one's) and the address
    within its /64 (``client_key``, as the throttle counts it; the first line keeps the
    exact address)."""
    refused = event.kind == "auth_failed"
    return (
        event.kind,
        event.tenant,
        event.key_id,
        client_key(event.client) if refused and event.client else event.client,
        None if refused else event.path,
        event.model,
        event.detail,
        event.config_sha256,
    )


def group(event: AuditEvent) -> Hashable:
    """What an overflow window (too many sources at once) still keeps apart."""
    return (event.kind, event.tenant, event.key_id)


def summary(folded: Folded[AuditEvent]) -> AuditEvent:
    """The line for a closed window: its first event, counted, at the time of reporting;
    a refusal's client as it was folded (an IPv6 address's /64: the repeats came from
    anywhere in it)."""
    update: dict[str, Any] = {"repeats": folded.count, "ts_ms": now_ms(), "key_fingerprint": None}
    if folded.first.kind == "auth_failed" and folded.first.client:
        update["client"] = client_key(folded.first.client)
    if folded.overflow:  # many sources at once: only kind and tenant are shared
        update |= {"client": None, "path": None, "model": None}
        update["detail"] = f"{folded.first.detail} (and others like it, from many sources)"
    return folded.first.model_copy(update=update)
