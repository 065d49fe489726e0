"""Vendor key pools: balance calls over a vendor's keys, bench a key that fails."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection


class KeyPool:
    """Round-robin over keys; a key rejected (401/403) or rate-limited sits out a while.

    Keys are held only in memory and only by index in anything that may be logged.
    """

    def __init__(self, keys: list[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = keys
        self._benched_until = [0.0] * len(keys)
        self._turn = itertools.cycle(range(len(keys))) if keys else iter(())
        self._clock = clock

    def __len__(self) -> int:
        return len(self._keys)

    def pick(self, skip: Collection[int] = ()) -> tuple[int, str]:
        """The next usable key not in ``skip``; if every such key is benched, the one
        back soonest."""
        if not self._keys:
            return -1, ""
        now = self._clock()
        for _ in range(len(self._keys)):
            i = next(self._turn)
            if self._benched_until[i] <= now and i not in skip:
                return i, self._keys[i]
        left = [i for i in range(len(self._keys)) if i not in skip] or range(len(self._keys))
        i = min(left, key=self._benched_until.__getitem__)
        return i, self._keys[i]

    def free(self, skip: Collection[int] = ()) -> bool:
        """Whether some key not in ``skip`` is not sitting out now."""
        now = self._clock()
        return any(u <= now for i, u in enumerate(self._benched_until) if i not in skip)

    def wait(self) -> float:
        """Seconds until some key is free again (0.0 when one is now, or the pool has
        none): how long a call to this vendor would wait for a key it may use."""
        if not self._keys:
            return 0.0
        return max(0.0, min(self._benched_until) - self._clock())

    def key(self, index: int) -> str:
        """The key at ``index`` (recorded earlier); the next usable one if it is gone."""
        if 0 <= index < len(self._keys):
            return self._keys[index]
        return self.pick()[1]

    def bench(self, index: int, seconds: float) -> None:
        """Take the key at ``index`` out for ``seconds``; a shorter bench never cuts a
        longer one short (a 429 without Retry-After after one with 20 s)."""
        if 0 <= index < len(self._keys):
            until = self._clock() + seconds
            self._benched_until[index] = max(self._benched_until[index], until)
