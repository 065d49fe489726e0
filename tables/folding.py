"""Flood control for event streams: identical events within a window fold into one line.

The first event of its kind passes at once; identical ones during the next ``window_s``
are only counted, and once that window has closed one more line says how many there
were.  A client trying relay keys by the thousand thus costs the audit topic two lines
per window instead of one per try, and no attempt goes unrecorded.

At most ``max_open`` windows are tracked; beyond that (many sources at once) new events
fold into one overflow window per ``group`` they name (for the audit log: the kind of
event and the tenant, so a flood of anonymous refusals never hides a tenant's).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P")


@dataclass
class _Window(Generic[P]):
    closes: float
    first: P
    overflow: bool
    folded: int = 0


@dataclass(frozen=True)
class Folded(Generic[P]):
    """A closed window that swallowed events: its first event and how many followed it.
    ``overflow``: the window gathered events of many sources (only the group is shared)."""

    first: P
    count: int
    overflow: bool


class Folder(Generic[P]):
    def __init__(self, window_s: float = 10.0, max_open: int = 10_000) -> None:
        self.window_s = window_s
        self.max_open = max_open
        self._open: dict[Hashable, _Window[P]] = {}
        self._closed: list[Folded[P]] = []
        self._latest = float("-inf")

    def offer(self, key: Hashable, event: P, now: float, group: Hashable = None) -> float | None:
        """None when ``event`` should go out now; otherwise it was counted, and the
        returned time is when its window closes (and ``due`` reports it)."""
        # Windows must open in time order (see _close): a clock stepping back is held.
        now = self._latest = max(now, self._latest)
        self._close(now)
        overflow = key not in self._open and len(self._open) >= self.max_open
        if overflow:
            key = ("overflow", group)
        window = self._open.get(key)
        if window is None:
            self._open[key] = _Window(now + self.window_s, event, overflow)
            return None
        window.folded += 1
        return window.closes

    def due(self, now: float) -> list[Folded[P]]:
        """The windows closed by ``now`` that folded events, each reported once."""
        self._close(now)
        closed, self._closed = self._closed, []
        return closed

    def next_close(self) -> float | None:
        """When the earliest window holding folded events closes (None: nothing to report)."""
        return min((w.closes for w in self._open.values() if w.folded), default=None)

    def _close(self, now: float) -> None:
        # Every window lasts as long and opens at offer()'s non-decreasing "now", so the
        # dict's insertion order is closing order: stop at the first still open.
        while self._open:
            key, window = next(iter(self._open.items()))
            if window.closes > now:
                return
            del self._open[key]
            if window.folded:
                self._closed.append(Folded(window.first, window.folded, window.overflow))
