"""A clock the test moves by hand (``clock.now += 10``), for code that takes one."""

from __future__ import annotations


class Clock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
