"""Logs that say a thing once, not sixty times a second.

While its broker is down, the Kafka client logs the same few errors (cannot connect, no
metadata, fetch failed) for every retry: about sixty lines a second per process, which
buries whatever else was said and fills disks.  ``Repeats`` lets the first of each kind
through at once, holds back the rest for a window, and then says how many it held.
"""

from __future__ import annotations

import importlib
import logging
import time

# The Kafka client, and the ledger's producer (a line the broker never took, each time)
NOISY_WITHOUT_BROKER = ("aiokafka", "streams.producers")
REPEAT_WINDOW_S = 30.0


class Repeats(logging.Filter):
    """Passes a record unless one with the same logger, level and message template
    passed within ``window_s``; the next one to pass tells how many were held back."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        passed_at, held = self._last.get(key, (float("-inf"), 0))
        if now - passed_at < self.window_s:
            self._last[key] = (passed_at, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            said = f"{held} more like this in the last {now - passed_at:.0f}s"
            record.msg = f"{record.msg} ({said})"  # no "%" added: safe to format with args
        return True


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
    return repeats
