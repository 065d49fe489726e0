"""The producer for lines on nobody's critical path: ledger, audit and dead letters.

Gateway and worker both write them this way.  They wait up to ``LEDGER_LINGER_MS`` to
share a produce request: the spend agent folds the ledger every 250 ms anyway, and at 60
requests/s one produce request per line cost the broker and the worker (which reads the
ledger back) ~2 ms of CPU per request more.  Idempotent, so a send retried after a
timeout is not a second ledger line.

Nobody awaits a line's delivery, so the producer itself sees that none is lost while the
broker is away.  A line it cannot queue within ``SEND_WAIT_S`` (its buffer full), one the
broker never took (the batch expired), and one still held when the process stops (after
``STOP_GRACE_S``) are written to a spill file under ``spill_dir``, and whichever producer
starts there next sends them again.  A line the broker refuses for good (too large, not
authorised) is logged and dropped: sending it again would fail again.  Each line spilled,
lost (it could not be spilled) or refused counts in ``relay_unsent_lines_total``, and
each kind of loss is logged apart (by topic, kept or lost).  A line can arrive
twice (a broker that took it just after the stop gave up on it): ``relay report`` counts
a ledger line once by its event id, the spend agent only within the last 100 000 ids it
saw, and audit events carry no id.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import Counter

from streams.logs import FOLD_BY
from streams.stopping import STOP_GRACE_S, close_unflushed

LEDGER_LINGER_MS = 250
SEND_WAIT_S = 1.0  # a send waiting longer for room (the broker away) goes to the spill file

# Counted here, in gateways and workers alike: each exposes it on its own /metrics.
# Every series starts at 0 with the process.
UNSENT = Counter(
    "relay_unsent_lines_total",
    "Ledger, audit and dead-letter lines not delivered as sent, by kind and outcome: spilled "
    "(kept in a spill file, sent again at the next start), lost (could not be spilled), "
    "refused (by the broker, for good)",
    ["kind", "outcome"],
)
# A line's kind, by the last part of its topic's name (``streams.topics.Topics``).
UNSENT_KINDS = {"usage": "usage", "audit": "audit", "dead-letter": "dead_letter"}
UNSENT_OUTCOMES = ("spilled", "lost", "refused")
for _kind in (*UNSENT_KINDS.values(), "other"):
    for _outcome in UNSENT_OUTCOMES:
        UNSENT.labels(_kind, _outcome)


def line_kind(topic: str) -> str:
    """``usage``, ``audit`` or ``dead_letter`` for a line on one of those topics (under
    any prefix), else ``other``."""
    return UNSENT_KINDS.get(topic.rpartition(".")[2], "other")


def count_unsent(lines: Iterable[tuple[str, object, object]], outcome: str) -> None:
    """``lines`` (topic, key, value) were spilled, lost or refused (``outcome``)."""
    for topic, _, _ in lines:
        UNSENT.labels(line_kind(topic), outcome).inc()


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
        self._closed = False
        self._failed: list[Line] = []  # failed deliveries, spilled once per loop turn
        self._spill: IO[bytes] | None = None
        self._spill_path: Path | None = None
        self._lost_any = False  # a line could not be spilled: keep the files resent
        self._resending: asyncio.Future[None] | None = None
        self._settling: dict[asyncio.Future[None], Path] = {}  # resent file, by its task

    async def start(self) -> None:
        """Start; lines spilled by earlier runs are sent again in the background."""
        await self.producer.start()
        if self.spill_dir is not None:
            self._resending = asyncio.ensure_future(self._resend_spilled())

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Queue one line; raises only for a line the broker would refuse for good."""
        await self._queue((topic, key, value))

    async def _queue(self, line: Line) -> asyncio.Future[object] | None:
        topic, key, value = line
        if self._closed:
            self._spill_now([line], "the producer had stopped")
            return None
        try:
            async with asyncio.timeout(SEND_WAIT_S):  # no task of its own: the hot path
                delivery: asyncio.Future[object] = await self.producer.send(topic, value, key=key)
        except (KafkaError, TimeoutError) as exc:
            if not _worth_keeping(exc):
                count_unsent([line], "refused")
                raise
            self._spill_now([line], f"it could not be queued ({exc!r})")
            return None
        self.pending[delivery] = line
        delivery.add_done_callback(self._delivered)
        return delivery

    def _delivered(self, delivery: asyncio.Future[object]) -> None:
        line = self.pending.pop(delivery, None)
        if line is None or delivery.cancelled() or (exc := delivery.exception()) is None:
            return
        if not _worth_keeping(exc):
            count_unsent([line], "refused")
            log.error(
                "a line for %s was refused by the broker and dropped: %r",
                line[0],
                exc,
                extra={FOLD_BY: line[0]},
            )
            return
        self._failed.append(line)
        if len(self._failed) == 1:  # one spill write for every failure of this loop turn
            asyncio.get_running_loop().call_soon(self._spill_failed)

    def _spill_failed(self) -> None:
        lines, self._failed = self._failed, []
        if lines:
            self._spill_now(lines, "the broker did not take them in time")

    def keep(self, lines: list[Line], why: str) -> bool:
        """Put ``lines`` in a spill file of their own, closed at once, for the next
        producer that starts to send (a producer that could not start keeps its lines
        so); True when they were kept."""
        kept = self._spill_now(lines, why)
        if self._spill is not None:
            self._spill.close()  # (and its lock: the next start claims it)
            self._spill, self._spill_path = None, None
        return kept

    def _spill_now(self, lines: list[Line], why: str) -> bool:
        kept, where = self._keep(lines)
        count_unsent(lines, "spilled" if kept else "lost")
        topics = ", ".join(sorted({topic for topic, _, _ in lines}))
        # Folded apart by topic and fate: lines kept never hide lines lost, nor the
        # ledger's the audit log's.
        said = "%d lines for %s not written (%s); %s"
        log.error(said, len(lines), topics, why, where, extra={FOLD_BY: (topics, kept)})
        return kept

    async def stop(self) -> None:
        """Deliver what is held (waiting up to ``stop_grace_s``), then close; what is
        still held then goes to the spill file."""
        if self._resending is not None and not self._resending.done():
            self._resending.cancel()  # what it queued is held like any other line
        try:
            if self.pending:
                await asyncio.wait(list(self.pending), timeout=self.stop_grace_s)
            self._spill_failed()
            if not self.pending:
                self._closed = True
                await self.producer.stop()  # every line delivered: resent files go
                return
            self._closed = True  # lines sent from here on go straight to the spill file
            await close_unflushed(self.producer)
            self._spill_failed()
            held, self.pending = list(self.pending.values()), {}
            kept = self._spill_now(held, f"the broker was away {self.stop_grace_s:.0f}s at stop")
            for settling, path in list(self._settling.items()):
                settling.cancel()
                if kept and not self._lost_any:  # a resent file's lines are in this one
                    _remove(path)
        finally:
            await asyncio.gather(*list(self._settling), return_exceptions=True)
            if self._resending is not None:
                await asyncio.gather(self._resending, return_exceptions=True)
            if self._spill is not None:
                self._spill.close()  # a line sent after this opens a spill file of its own
                self._spill, self._spill_path = None, None

    def _keep(self, lines: list[Line]) -> tuple[bool, str]:
        """Append ``lines`` to this process's spill file: whether they were kept, and
        where they went, for the log."""
        if self.spill_dir is None:
            self._lost_any = True
            return False, "lost (no spill directory)"
        try:
            if self._spill is None:
                self._spill, self._spill_path = _new_spill(self.spill_dir)
            for topic, key, value in lines:
                key_text = key.decode() if key is not None else None
                entry = {"topic": topic, "key": key_text, "value": value.decode()}
                self._spill.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            self._spill.flush()
            os.fsync(self._spill.fileno())
        except (OSError, ValueError) as exc:
            self._lost_any = True
            return False, f"lost: the spill file could not be written ({exc})"
        return True, f"kept in {self._spill_path}, to be sent again at the next start"

    async def _resend_spilled(self) -> None:
        """Send again what earlier runs spilled here.  Each file stays locked until its
        lines are delivered (or failed and spilled again, to this process's own file),
        then goes; a file another live process holds is left to it."""
        assert self.spill_dir is not None
        for path in sorted(self.spill_dir.glob("*.jsonl")):
            if path == self._spill_path or (held := _claim(path)) is None:
                continue
            deliveries: list[asyncio.Future[object]] = []
            lines = _lines(held, path)
            line: Line | None = None
            try:
                for line in lines:
                    try:
                        if (delivery := await self._queue(line)) is not None:
                            deliveries.append(delivery)
                    except KafkaError as exc:  # refused for good: sending it again is no use
                        log.error("a spilled line for %s dropped: %r", line[0], exc)
                    line = None  # queued, or kept again, or dropped: this file is done with it
            except asyncio.CancelledError:
                # Stopped part way through the file: the lines not queued yet move to this
                # process's own spill file and the file goes, so the next start sends each
                # line once (those queued are held, and kept at stop if not delivered).
                rest = ([line] if line is not None else []) + list(lines)
                if not rest or self._spill_now(rest, "the producer stopped while resending"):
                    _remove(path)
                held.close()
                raise
            except BaseException:
                held.close()
                raise
            log.warning("sending again %d lines an earlier run spilled", len(deliveries))
            settling = asyncio.ensure_future(self._settle(path, held, deliveries))
            self._settling[settling] = path
            settling.add_done_callback(lambda done: self._settling.pop(done, None))

    async def _settle(
        self, path: Path, held: IO[bytes], deliveries: list[asyncio.Future[object]]
    ) -> None:
        try:
            if deliveries:
                await asyncio.wait(deliveries)
            self._spill_failed()
            if not self._lost_any:  # each line delivered, or failed and spilled again
                _remove(path)
        finally:
            held.close()


def _worth_keeping(exc: BaseException) -> bool:
    """Whether a line that failed this way may go through later: the broker away (a
    timeout, a connection), not a refusal that would come again."""
    if isinstance(exc, KafkaTimeoutError | TimeoutError):
        return True
    return bool(getattr(exc, "retriable", False))


def _new_spill(spill_dir: Path) -> tuple[IO[bytes], Path]:
    """A new spill file, locked before it has the name other starts look for."""
    spill_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path = spill_dir / f"{name}.jsonl"
    spill = open(spill_dir / f"{name}.tmp", "ab")
    try:
        fcntl.flock(spill, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives
        os.rename(spill.name, path)
    except OSError:
        spill.close()
        raise
    return spill, path


def _claim(path: Path) -> IO[bytes] | None:
    """The spill file at ``path``, open and locked; None when another process holds it
    (its writer still runs, or another start is sending it) or it is gone."""
    try:
        spilled = open(path, "rb")
    except OSError:
        return None
    try:
        fcntl.flock(spilled, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(spilled.fileno()).st_nlink == 0:  # sent and removed meanwhile
            raise FileNotFoundError(path)
    except OSError:
        spilled.close()
        return None
    return spilled


def _lines(spilled: IO[bytes], path: Path) -> Iterator[Line]:
    for raw in spilled:
        try:
            entry = orjson.loads(raw)
            key = entry["key"].encode() if entry["key"] is not None else None
            yield str(entry["topic"]), key, entry["value"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            log.warning("skipped an unreadable line spilled in %s", path)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s, whose lines were sent: %s", path, exc)
