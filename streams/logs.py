"""Logs that say a thing once, not sixty times a second.

While its broker is down, the Kafka client logs the same few errors (cannot connect, no
metadata, fetch failed) for every retry: about sixty lines a second per process, which
buries whatever else was said and fills disks.  ``Repeats`` lets the first of each kind
through at once, holds back the rest for a window, and then says how many it held.

A kind is a logger, a level and a message template; a record logged with
``extra={FOLD_BY: value}`` is of a kind of its own for each value (the ledger's producer
folds its errors per topic: one for the ledger never hides one for the audit log).  What is
still held back when the process exits is said then (``Repeats.flush``).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import time

# The Kafka client, and the ledger's producer (a line the broker never took, each time)
NOISY_WITHOUT_BROKER = ("aiokafka", "streams.producers")
REPEAT_WINDOW_S = 30.0
FOLD_BY = "fold_by"  # the ``extra`` key that makes a record's kind finer

Kind = tuple[str, int, str, object]


class Repeats(logging.Filter):
    """Passes a record unless one of its kind (logger, level, message template and any
    ``FOLD_BY``) passed within ``window_s``; the next one to pass tells how many were
    held back."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        # Each kind: when one last passed, how many were held back since, and the last
        # of those as it read (what ``flush`` tells of them).
        self._last: dict[Kind, tuple[float, int, str]] = {}
        self._flushing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self._flushing:
            return True  # (flush's own lines: one per kind, never folded together)
        key = (record.name, record.levelno, str(record.msg), getattr(record, FOLD_BY, None))
        now = time.monotonic()
        passed_at, held, _ = self._last.get(key, (float("-inf"), 0, ""))
        if now - passed_at < self.window_s:
            self._last[key] = (passed_at, held + 1, _said(record))
            return False
        self._last[key] = (now, 0, "")
        if held:
            said = f"{held} more like this in the last {now - passed_at:.0f}s"
            record.msg = f"{record.msg} ({said})"  # no "%" added: safe to format with args
        return True

    def flush(self) -> None:
        """Say how many of each kind are held back and not told yet (at exit: no later
        record of theirs will tell), one line for each kind, with the last one held as
        it read: which topic, what became of its lines."""
        now = time.monotonic()
        self._flushing = True
        try:
            for (name, level, _, fold), (passed_at, held, last) in list(self._last.items()):
                if held:
                    logging.getLogger(name).log(
                        level,
                        "%d more like %r held back in the last %.0fs",
                        held,
                        last,
                        now - passed_at,
                        extra=None if fold is None else {FOLD_BY: fold},
                    )
        finally:
            self._flushing = False
        self._last.clear()


def _said(record: logging.LogRecord) -> str:
    """The record's message, or its template when its arguments do not fit it."""
    try:
        return record.getMessage()
    except Exception:  # (logging itself would only report it, never raise)
        return str(record.msg)


def quiet_repeats(
    prefixes: tuple[str, ...] = NOISY_WITHOUT_BROKER, window_s: float = REPEAT_WINDOW_S
) -> Repeats:
    """Fold repeats on every logger under ``prefixes`` that their packages' import made (a
    logger's filter sees only what is logged on that very logger)."""
    repeats = Repeats(window_s)
    for prefix in prefixes:
        importlib.import_module(prefix)
        known = logging.root.manager.loggerDict
        for name in [prefix, *(n for n in known if n.startswith(prefix + "."))]:
            logging.getLogger(name).addFilter(repeats)
    atexit.register(repeats.flush)  # (before logging's own exit hook, registered earlier)
    return repeats
