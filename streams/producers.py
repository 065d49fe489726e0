"""The producer for lines on nobody's critical path: ledger, audit and dead letters.

Gateway and worker both write them this way.  They wait up to ``LEDGER_LINGER_MS`` to
share a produce request: the spend agent folds the ledger every 250 ms anyway, and at 60
requests/s one produce request per line cost the broker and the worker (which reads the
ledger back) ~2 ms of CPU per request more.  Idempotent, so a send retried after a
timeout is not a second ledger line.

Nobody awaits a line's delivery, so the producer itself sees that none is lost.  A line
the broker never took (it stayed away past the client's request timeout), or one still
held when the process stops (after ``STOP_GRACE_S``), is written to a spill file under
``spill_dir``; the next producer to start there sends every spilled line again.  Readers
of the ledger count a line once by its event id, so one sent twice does no harm.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
import uuid
from pathlib import Path
from typing import IO

import orjson
from aiokafka import AIOKafkaProducer

from streams.stopping import STOP_GRACE_S, close_unflushed

LEDGER_LINGER_MS = 250

log = logging.getLogger(__name__)

Line = tuple[str, bytes | None, bytes]  # topic, key, value


class BackgroundProducer:
    def __init__(
        self,
        bootstrap: str,
        spill_dir: Path | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=LEDGER_LINGER_MS,
            acks="all",
            enable_idempotence=True,
        )
        self.spill_dir = spill_dir
        self.stop_grace_s = stop_grace_s
        self.pending: dict[asyncio.Future[object], Line] = {}
        self._spill: IO[bytes] | None = None
        self._settling: dict[asyncio.Future[None], Path] = {}  # resent file, by its task

    async def start(self) -> None:
        await self.producer.start()
        await self._resend_spilled()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one line (raises at once only when the producer refuses it outright)."""
        await self._queue((topic, key, value))

    async def _queue(self, line: Line) -> asyncio.Future[object]:
        topic, key, value = line
        delivery: asyncio.Future[object] = await self.producer.send(topic, value, key=key)
        self.pending[delivery] = line
        delivery.add_done_callback(self._delivered)
        return delivery

    def _delivered(self, delivery: asyncio.Future[object]) -> None:
        line = self.pending.pop(delivery, None)
        if line is None or delivery.cancelled() or delivery.exception() is None:
            return
        _, where = self._keep([line])
        log.error("a line for %s was not written (%r); %s", line[0], delivery.exception(), where)

    async def stop(self) -> None:
        """Deliver what is held (waiting up to ``stop_grace_s``), then close."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=self.stop_grace_s)
        if self.pending:
            held = list(self.pending.values())
            self.pending.clear()
            kept, where = self._keep(held)
            log.error(
                "%d lines (ledger, audit) could not reach the broker within %.0fs of stopping; %s",
                len(held),
                self.stop_grace_s,
                where,
            )
            await close_unflushed(self.producer)
            for settling, path in list(self._settling.items()):
                settling.cancel()
                if kept:  # lines resent from an earlier spill file are in this one now
                    _remove(path)
        else:
            await self.producer.stop()  # every line delivered: resent files go
        await asyncio.gather(*list(self._settling), return_exceptions=True)
        if self._spill is not None:
            self._spill.close()

    def _keep(self, lines: list[Line]) -> tuple[bool, str]:
        """Append ``lines`` to this process's spill file: whether they were kept, and
        where they went, for the log."""
        if self.spill_dir is None:
            return False, "lost (no spill directory)"
        try:
            if self._spill is None:
                self.spill_dir.mkdir(parents=True, exist_ok=True)
                name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
                self._spill = open(self.spill_dir / f"{name}.jsonl", "ab")
                # Held while this process lives: no other start sends it from under us.
                fcntl.flock(self._spill, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for topic, key, value in lines:
                key_text = key.decode() if key is not None else None
                entry = {"topic": topic, "key": key_text, "value": value.decode()}
                self._spill.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            self._spill.flush()
            os.fsync(self._spill.fileno())
        except (OSError, ValueError) as exc:
            return False, f"lost: the spill file could not be written ({exc})"
        return True, f"kept in {self._spill.name}, to be sent again at the next start"

    async def _resend_spilled(self) -> None:
        """Send again what earlier runs spilled here; each file goes once its lines are
        delivered (what fails again is spilled again, to this process's own file), and
        meanwhile stays locked, so no other start sends it too.  Start does not wait."""
        if self.spill_dir is None or not self.spill_dir.is_dir():
            return
        for path in sorted(self.spill_dir.glob("*.jsonl")):
            if (claimed := _claim(path)) is None:
                continue  # another live process is sending it
            held, lines = claimed
            deliveries = [await self._queue(line) for line in lines]
            log.warning("sending again %d lines spilled by an earlier run", len(lines))
            settling = asyncio.ensure_future(_settle(path, held, deliveries))
            self._settling[settling] = path
            settling.add_done_callback(lambda done: self._settling.pop(done, None))


async def _settle(path: Path, held: IO[bytes], deliveries: list[asyncio.Future[object]]) -> None:
    try:
        if deliveries:
            await asyncio.wait(deliveries)
        _remove(path)  # each line delivered, or failed and spilled again
    finally:
        held.close()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _claim(path: Path) -> tuple[IO[bytes], list[Line]] | None:
    """The spill file at ``path``, locked, and its lines; None when another process
    holds it (it is sending them)."""
    spilled = open(path, "rb")
    try:
        fcntl.flock(spilled, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        spilled.close()
        return None
    lines: list[Line] = []
    for raw in spilled:
        try:
            entry = orjson.loads(raw)
            key = entry["key"].encode() if entry["key"] is not None else None
            lines.append((str(entry["topic"]), key, entry["value"].encode()))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("skipped an unreadable line spilled in %s", path)
    return spilled, lines
