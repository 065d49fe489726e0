"""A fetched record batch the worker cannot read is reported and stepped over, not a crash.

aiokafka decodes every record header's key as strict UTF-8 (its C extension and its pure
Python reader alike), while Kafka's wire format and the Java broker take any bytes (Go's
Sarama sends ``[]byte`` keys).  One such record raised ``UnicodeDecodeError`` inside
``getmany()``, before Faust handed anything to an agent: Faust's fetcher died of it, the
worker stopped, and every worker owning the partition next met the same uncommitted
offset.  Nothing was dead-lettered; the position never moved.

``install`` patches two names of ``aiokafka.consumer.fetcher``, the module whose
``Fetcher._proc_fetch_request`` builds each fetched partition's records:

- ``MemoryRecords`` becomes ``_KeptRecords``: aiokafka's own reader (the C one), holding
  on to the fetched bytes, so that an unreadable batch can be cut out of them;
- ``PartitionRecords`` becomes ``_GuardedRecords``, a subclass that hands aiokafka's own
  ``_unpack_records`` batches whose records are read under guard.  The first record that
  fails ends its batch: ``report`` is given an ``Unreadable`` (topic, partition, the
  offsets not delivered, the error, the batch's bytes), and ``_unpack_records`` moves the
  fetch position past the batch, as after any other.

The batch's records before the one that failed are delivered as usual.  Those after it
cannot be read apart from it (the reader's place in the batch goes with the error), so
they are reported with it.  A batch with a bad CRC is not guarded: aiokafka raises
before any record is read, and fetching it again is the cure for a torn transfer.

The patch is process-wide (every aiokafka consumer in the process; the worker runs only
Faust's); a readable batch costs one generator step more per record.
``install`` checks the shapes it relies on and raises ``AiokafkaChanged`` when they
differ: an aiokafka upgrade that moves them fails the worker at its start, not at the
first bad record.
"""

from __future__ import annotations

import inspect
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiokafka
from aiokafka.consumer import fetcher
from aiokafka.consumer.fetcher import PartitionRecords as _PartitionRecords
from aiokafka.record.memory_records import MemoryRecords

log = logging.getLogger("relay.worker")

# PartitionRecords.__init__ as the fetcher calls it (positionally) in aiokafka 0.14.
_PARAMETERS = [
    "self",
    "tp",
    "records",
    "aborted_transactions",
    "fetch_offset",
    "key_deserializer",
    "value_deserializer",
    "check_crcs",
    "isolation_level",
]
# What _unpack_records reads and writes: the batches through ``self._records``, and the
# position through ``next_fetch_offset``, set to a batch's ``next_offset`` after it.
_UNPACKS = {"_records", "has_next", "next_batch", "next_fetch_offset", "next_offset"}
# Fetcher._proc_fetch_request builds both by their module-level names.
_BUILDS = {"MemoryRecords", "PartitionRecords"}


class AiokafkaChanged(RuntimeError):
    """aiokafka's fetcher is not shaped as this guard expects: check the guard against
    the new version before running the worker on it."""


@dataclass(frozen=True)
class Unreadable:
    """Records of a fetched batch that could not be read: offsets ``first`` to ``last``
    of ``topic``/``partition``; ``raw`` is the whole batch as fetched (b"" if it could
    not be found in the fetch)."""

    topic: str
    partition: int
    first: int
    last: int
    error: str
    raw: bytes

    @property
    def where(self) -> str:
        """``topic[partition]@first``, or ``@first-last`` for several records."""
        span = f"{self.first}-{self.last}" if self.last > self.first else str(self.first)
        return f"{self.topic}[{self.partition}]@{span}"


Report = Callable[[Unreadable], None]


def skipped(bad: Unreadable) -> None:
    """Log ``bad`` as stepped over: the report where nothing is dead-lettered."""
    log.error("skipped %s: a record batch that cannot be read (%s)", bad.where, bad.error)


_report: Report = skipped
_ORIGINAL = {"MemoryRecords": MemoryRecords, "PartitionRecords": _PartitionRecords}


def install(report: Report = skipped) -> None:
    """Guard every fetch in this process, telling ``report`` of each unreadable batch
    (called on the consumer's event loop, never raising into it).  Installing again
    only changes ``report``."""
    global _report
    check()
    _report = report
    fetcher.MemoryRecords = _KeptRecords  # type: ignore[misc]
    fetcher.PartitionRecords = _GuardedRecords  # type: ignore[misc]


def uninstall() -> None:
    """aiokafka's own fetch again (for tests)."""
    global _report
    _report = skipped
    fetcher.MemoryRecords = _ORIGINAL["MemoryRecords"]  # type: ignore[misc]
    fetcher.PartitionRecords = _ORIGINAL["PartitionRecords"]  # type: ignore[misc]


def check() -> None:
    """Raise ``AiokafkaChanged`` unless aiokafka's fetcher is shaped as the guard needs."""
    where = f"aiokafka {aiokafka.__version__} ({fetcher.__file__})"
    original = _ORIGINAL["PartitionRecords"]
    problems = []
    if fetcher.MemoryRecords not in (MemoryRecords, _KeptRecords):
        problems.append("fetcher.MemoryRecords is not aiokafka.record's MemoryRecords")
    if fetcher.PartitionRecords not in (original, _GuardedRecords):
        problems.append("fetcher.PartitionRecords was replaced by someone else")
    try:
        parameters = list(inspect.signature(original.__init__).parameters)
    except (TypeError, ValueError):
        parameters = []
    if parameters != _PARAMETERS:
        problems.append(f"PartitionRecords.__init__ takes {parameters}, not {_PARAMETERS}")
    unpack = getattr(original, "_unpack_records", None)
    if not inspect.isgeneratorfunction(unpack):
        problems.append("PartitionRecords._unpack_records is no generator function")
    elif missing := _UNPACKS - set(unpack.__code__.co_names):
        problems.append(f"PartitionRecords._unpack_records no longer uses {sorted(missing)}")
    build = getattr(getattr(fetcher, "Fetcher", None), "_proc_fetch_request", None)
    if build is None:
        problems.append("Fetcher._proc_fetch_request is gone")
    elif missing := _BUILDS - set(build.__code__.co_names):
        problems.append(f"Fetcher._proc_fetch_request no longer builds {sorted(missing)}")
    if problems:
        raise AiokafkaChanged(
            f"the worker's guard against unreadable record batches (streams/fetch_guard.py) "
            f"does not fit {where}: " + "; ".join(problems)
        )


class _KeptRecords:
    """aiokafka's ``MemoryRecords`` over a fetch's bytes, which it keeps for ``cut``."""

    __slots__ = ("_records", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = MemoryRecords(data)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        return self._records.next_batch()


class _GuardedRecords(_PartitionRecords):
    """aiokafka's ``PartitionRecords``, reading its batches under guard."""

    def __init__(
        self, tp: Any, records: Any, aborted_transactions: Any, fetch_offset: int, *rest: Any
    ) -> None:
        batches = _Batches(tp, records, fetch_offset)
        super().__init__(tp, batches, aborted_transactions, fetch_offset, *rest)


class _Batches:
    """The fetch's batches, each one guarded."""

    __slots__ = ("fetch_offset", "records", "tp")

    def __init__(self, tp: Any, records: Any, fetch_offset: int) -> None:
        self.tp = tp
        self.records = records
        self.fetch_offset = fetch_offset

    def size_in_bytes(self) -> int:
        return int(self.records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self.records.has_next())

    def next_batch(self) -> Any:
        batch = self.records.next_batch()
        return None if batch is None else _GuardedBatch(batch, self)

    def unreadable(self, batch: Any, last_read: int, exc: Exception) -> None:
        """The records of ``batch`` from the one after ``last_read`` (or the fetch
        position, if later) were not read: report them, unless all lay before it."""
        first = max(last_read + 1, batch.base_offset, self.fetch_offset)
        last = batch.next_offset - 1
        if first > last:
            return
        data = getattr(self.records, "data", b"")
        bad = Unreadable(
            self.tp.topic,
            self.tp.partition,
            first,
            last,
            f"{type(exc).__name__}: {exc}",
            cut(data, batch.base_offset),
        )
        try:
            _report(bad)
        except Exception:  # the fetch goes on whatever the report does
            log.exception("an unreadable batch could not be reported")
            skipped(bad)


class _GuardedBatch:
    """One record batch: what aiokafka asks of it passes through, and its records are
    read under guard."""

    __slots__ = ("_batch", "_batches")

    def __init__(self, batch: Any, batches: _Batches) -> None:
        self._batch = batch
        self._batches = batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # a control batch's marker, read by aiokafka directly
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        last_read = -1
        try:
            records = iter(self._batch)  # (decompresses: a codec missing fails here)
        except Exception as exc:
            self._batches.unreadable(self._batch, last_read, exc)
            return
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:
                self._batches.unreadable(self._batch, last_read, exc)
                return
            last_read = record.offset
            yield record


_BATCH_HEAD = struct.Struct(">qi")  # base offset, then the length of what follows


def cut(data: bytes, base_offset: int) -> bytes:
    """The batch starting at ``base_offset`` in a fetch's ``data``, as on the wire
    (every message format starts a batch with its offset and length); b"" if not there."""
    pos = 0
    while pos + _BATCH_HEAD.size <= len(data):
        offset, length = _BATCH_HEAD.unpack_from(data, pos)
        end = pos + _BATCH_HEAD.size + length
        if offset == base_offset:
            return bytes(data[pos:end])
        if length <= 0:
            break
        pos = end
    return b""
