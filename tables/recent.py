"""The ids of the last events seen, to drop one that arrives twice.

A producer that retries a send after a timeout may have written the event already, and a
service posting straight to a topic may post twice; both copies land next to each other,
so remembering the most recent ids (not all of them) is enough to count each event once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class RecentIds:
    """An insertion-ordered set of at most ``size`` ids; the oldest drop out first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[Hashable, None] = OrderedDict()

    def take(self, event_id: Hashable) -> bool:
        """Whether ``event_id`` is among those remembered; it is forgotten then."""
        try:
            del self._ids[event_id]
        except KeyError:
            return False
        return True

    def first_time(self, event_id: Hashable) -> bool:
        """Remember ``event_id``; False when it was among the last ``size`` seen."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True
