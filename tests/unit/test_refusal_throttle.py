"""Key guessing slows down: refused keys per address, with a burst and a refill."""

from __future__ import annotations

import pytest

from gateway.auth import RefusalThrottle


def test_an_address_gets_its_allowance_then_waits() -> None:
    throttle = RefusalThrottle(per_minute=3)
    assert [throttle.refuse("10.0.0.7", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.refuse("10.0.0.7", 0.0) == pytest.approx(20.0)  # one refill: 60 s / 3
    assert throttle.refuse("10.0.0.8", 0.0) == 0.0, "another address is not held back"
    assert throttle.refuse("10.0.0.7", 20.0) == 0.0, "refilled"


def test_zero_means_no_limit_and_memory_stays_bounded() -> None:
    assert RefusalThrottle(per_minute=0).refuse("a", 0.0) == 0.0
    throttle = RefusalThrottle(per_minute=1, max_clients=2)
    for client in ("a", "b", "c"):
        throttle.refuse(client, 0.0)
    assert throttle.refuse("a", 0.0) == 0.0, "the oldest address was forgotten"
    assert throttle.refuse("c", 0.0) > 0.0
