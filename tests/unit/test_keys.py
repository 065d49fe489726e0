"""Vendor key pools: round-robin over the keys, a benched key sits out its longest bench."""

from __future__ import annotations

from agents.keys import KeyPool
from tests.support.clock import Clock


def test_keys_take_turns_and_a_benched_key_sits_out() -> None:
    clock = Clock()
    pool = KeyPool(["sk-a", "sk-b"], clock=clock)
    assert [pool.pick()[1] for _ in range(4)] == ["sk-a", "sk-b", "sk-a", "sk-b"]
    pool.bench(0, 20)
    assert [pool.pick()[1] for _ in range(3)] == ["sk-b"] * 3
    assert pool.free() and not pool.free(skip={1})
    clock.now = 21
    assert {pool.pick()[1] for _ in range(2)} == {"sk-a", "sk-b"}


def test_a_shorter_bench_does_not_cut_a_longer_one_short() -> None:
    """A revoked key (300 s) then a 429 without Retry-After (1 s) on a call that was in
    flight: the key stays out the 300 s."""
    clock = Clock()
    pool = KeyPool(["sk-a", "sk-b"], clock=clock)
    pool.bench(0, 300)
    pool.bench(0, 1)
    clock.now = 2
    assert [pool.pick()[1] for _ in range(4)] == ["sk-b"] * 4
    clock.now = 301
    assert "sk-a" in {pool.pick()[1] for _ in range(2)}


def test_every_key_benched_gives_the_one_back_soonest() -> None:
    clock = Clock()
    pool = KeyPool(["sk-a", "sk-b"], clock=clock)
    pool.bench(0, 30)
    pool.bench(1, 10)
    assert pool.pick() == (1, "sk-b") and not pool.free()


def test_wait_is_the_time_until_the_first_key_is_back() -> None:
    clock = Clock()
    pool = KeyPool(["sk-a", "sk-b"], clock=clock)
    assert pool.wait() == 0.0
    pool.bench(0, 20)
    assert pool.wait() == 0.0, "another key is free"
    pool.bench(1, 5)
    assert pool.wait() == 5.0
    clock.now = 6
    assert pool.wait() == 0.0
    assert KeyPool([]).wait() == 0.0
