"""Token buckets on a simulated clock, and the priority gate on a real event loop."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest

from schemas.envelope import Priority
from schemas.errors import RateLimited
from tables.buckets import PriorityGate, TokenBucket


def test_take_spends_until_empty_then_reports_the_wait() -> None:
    b = TokenBucket(capacity=3, refill_per_s=2.0, tokens=3, updated=0.0)
    assert [b.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(1, 0.0) == pytest.approx(0.5)
    assert b.tokens == pytest.approx(0.0)  # a refused take spends nothing
    assert b.take(1, 0.25) == pytest.approx(0.25)
    assert b.take(1, 0.5) == 0.0


def test_refill_never_exceeds_capacity() -> None:
    b = TokenBucket(capacity=2, refill_per_s=10.0, tokens=0, updated=0.0)
    assert b.wait(1, 100.0) == 0.0
    assert b.tokens == 2


def test_from_rpm_and_tpm_hold_one_second_of_burst() -> None:
    rpm = TokenBucket.from_rpm(600, now=5.0)
    assert (rpm.capacity, rpm.refill_per_s, rpm.tokens, rpm.updated) == (10.0, 10.0, 10.0, 5.0)
    tpm = TokenBucket.from_tpm(120_000)
    assert tpm.capacity == 2_000 and tpm.refill_per_s == 2_000
    assert TokenBucket.from_rpm(6).capacity == 1.0  # never less than one request


def test_bucket_round_trips_through_json() -> None:
    b = TokenBucket.from_tpm(6_000, now=3.0)
    b.take(40, 3.5)
    assert TokenBucket.model_validate(b.model_dump(mode="json")) == b


def test_600_rpm_admits_600_within_5pct_over_a_simulated_minute() -> None:
    b = TokenBucket.from_rpm(600, now=0.0)
    # A greedy client: it retries exactly when the bucket says to, or every 1 ms.
    now, admitted = 0.0, 0
    per_minute: list[int] = []
    while now < 180.0:
        wait = b.take(1, now)
        if wait == 0.0:
            admitted += 1
        else:
            now += max(wait, 0.001)
        if now >= 60.0 * (len(per_minute) + 1):
            per_minute.append(admitted - sum(per_minute))
    assert len(per_minute) == 3
    for count in per_minute:
        assert 570 <= count <= 630, per_minute
    # The first minute gets only the one-second burst on top.
    assert per_minute[0] <= 600 + 10 + 1


def test_600_rpm_with_bursty_arrivals_stays_within_5pct() -> None:
    b = TokenBucket.from_rpm(600, now=0.0)
    # 50 requests arrive at once every 2 s: far more than allowed; waiters retry at 10 ms.
    admitted, backlog, now = 0, 0, 0.0
    while now < 60.0:
        if round(now * 100) % 200 == 0:
            backlog += 50
        while backlog and b.take(1, now) == 0.0:
            backlog -= 1
            admitted += 1
        now = round(now + 0.01, 2)
    assert 570 <= admitted <= 630


def test_a_request_bigger_than_capacity_goes_through_and_leaves_debt() -> None:
    b = TokenBucket(capacity=100, refill_per_s=100.0, tokens=100, updated=0.0)
    assert b.take(500, 0.0) == 0.0
    assert b.tokens == -400
    assert b.wait(1, 0.0) == pytest.approx(4.01)


def test_settling_charges_use_beyond_the_estimate_up_to_a_minutes_refill() -> None:
    gate = PriorityGate(clock=lambda: 0.0)
    gate.configure("v:tpm", TokenBucket(capacity=100, refill_per_s=10.0, tokens=100))
    bucket = gate.bucket("v:tpm")
    assert bucket is not None
    bucket.take(50, 0.0)
    gate.settle("v:tpm", estimated=50, used=80)  # 30 more than admitted on
    assert bucket.tokens == 20
    gate.settle("v:tpm", estimated=50, used=10_000)  # a minute's refill (600) at most
    assert bucket.tokens == 20 - 550
    gate.settle("v:tpm", estimated=50, used=20)  # 30 unused come back
    assert bucket.tokens == 20 - 550 + 30


async def test_unconfigured_keys_are_unlimited() -> None:
    gate = PriorityGate()
    for _ in range(1000):
        await gate.acquire({"nobody:rpm": 1}, Priority.background, deadline=time.monotonic())
    assert gate.waiting == 0


async def test_lanes_are_served_best_first_and_fifo_within_a_lane() -> None:
    gate = PriorityGate()
    # One token, refilled every 20 ms: four queued waiters take about 80 ms.
    gate.configure("v:rpm", TokenBucket(capacity=1, refill_per_s=50.0, tokens=0, updated=0.0))
    gate.bucket("v:rpm").updated = time.monotonic()  # type: ignore[union-attr]
    order: list[str] = []

    async def call(name: str, lane: Priority) -> None:
        await gate.acquire({"v:rpm": 1, "tenant:rpm": 1}, lane, deadline=time.monotonic() + 2)
        order.append(name)

    tasks = []
    # Arrival order is the worst case: background first, realtime last.
    for name, lane in [
        ("background", Priority.background),
        ("batch", Priority.batch),
        ("realtime-1", Priority.realtime),
        ("realtime-2", Priority.realtime),
    ]:
        tasks.append(asyncio.create_task(call(name, lane)))
        await asyncio.sleep(0)  # let it queue before the next one arrives
    assert gate.waiting == 4
    started = time.monotonic()
    await asyncio.gather(*tasks)
    assert order == ["realtime-1", "realtime-2", "batch", "background"]
    assert time.monotonic() - started < 0.5
    assert gate.waiting == 0


async def test_hopeless_deadline_is_refused_at_once_and_spends_nothing() -> None:
    gate = PriorityGate()
    now = time.monotonic()
    gate.configure("a", TokenBucket(capacity=5, refill_per_s=5.0, tokens=5, updated=now))
    gate.configure("b", TokenBucket(capacity=1, refill_per_s=1.0, tokens=0, updated=now))
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        await gate.acquire({"a": 1, "b": 1}, Priority.realtime, deadline=now + 0.1)
    assert time.monotonic() - started < 0.5  # refused, not after waiting out the second
    assert info.value.retry_after == pytest.approx(1.0, abs=0.05)
    assert gate.waiting == 0
    assert gate.bucket("a").tokens == pytest.approx(5)  # type: ignore[union-attr]


async def test_requests_and_tokens_are_taken_together_or_not_at_all() -> None:
    """A call refused on its token budget keeps its request slot: RPM is not spent for
    calls that never went out."""
    gate = PriorityGate()
    now = time.monotonic()
    gate.configure("v:rpm", TokenBucket(capacity=2, refill_per_s=0.01, tokens=2, updated=now))
    gate.configure("v:tpm", TokenBucket(capacity=100, refill_per_s=1.0, tokens=10, updated=now))
    with pytest.raises(RateLimited):
        await gate.acquire({"v:rpm": 1, "v:tpm": 50}, Priority.realtime, deadline=now + 0.05)
    assert gate.bucket("v:rpm").tokens == pytest.approx(2)  # type: ignore[union-attr]
    await gate.acquire({"v:rpm": 1, "v:tpm": 5}, Priority.realtime, deadline=now + 0.05)
    assert gate.bucket("v:rpm").tokens == pytest.approx(1)  # type: ignore[union-attr]
    assert gate.bucket("v:tpm").tokens == pytest.approx(5, abs=0.2)  # type: ignore[union-attr]


async def test_deadline_passing_while_queued_raises_and_frees_the_place() -> None:
    gate = PriorityGate()
    gate.configure("v", TokenBucket(capacity=1, refill_per_s=50.0, tokens=0, updated=0.0))
    gate.bucket("v").updated = time.monotonic()  # type: ignore[union-attr]
    now = time.monotonic()
    # Alone, the background call would get the token in 20 ms, inside its 30 ms deadline...
    slow = asyncio.create_task(gate.acquire({"v": 1}, Priority.background, deadline=now + 0.03))
    await asyncio.sleep(0)
    # ...but a realtime call overtakes it, pushing it to 40 ms.
    fast = asyncio.create_task(gate.acquire({"v": 1}, Priority.realtime, deadline=now + 1))
    await fast
    with pytest.raises(RateLimited, match="deadline"):
        await slow
    assert gate.waiting == 0


async def test_a_cancelled_waiter_gives_its_place_to_the_next() -> None:
    gate = PriorityGate()
    gate.configure("v", TokenBucket(capacity=1, refill_per_s=50.0, tokens=0, updated=0.0))
    gate.bucket("v").updated = time.monotonic()  # type: ignore[union-attr]
    deadline = time.monotonic() + 1
    first = asyncio.create_task(gate.acquire({"v": 1}, Priority.realtime, deadline=deadline))
    second = asyncio.create_task(gate.acquire({"v": 1}, Priority.batch, deadline=deadline))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    first.cancel()
    await asyncio.sleep(0)
    assert first.cancelled()
    assert gate.waiting == 1  # the cancelled caller left the queue at once
    started = time.monotonic()
    await second
    assert time.monotonic() - started < 0.5
    assert gate.waiting == 0


async def test_waiters_on_other_buckets_are_not_held_up() -> None:
    now = time.monotonic()
    gate = PriorityGate(clock=lambda: now)  # frozen: the test is about order, not time
    gate.configure("slow", TokenBucket(capacity=1, refill_per_s=1.0, tokens=0, updated=now))
    gate.configure("free", TokenBucket(capacity=10, refill_per_s=10.0, tokens=10, updated=now))
    blocked = asyncio.create_task(gate.acquire({"slow": 1}, Priority.realtime, deadline=now + 5))
    await asyncio.sleep(0)
    # No slack at all: any wait would raise, so this proves it went straight through.
    await gate.acquire({"free": 1}, Priority.background, deadline=now)
    assert gate.bucket("free").tokens == pytest.approx(9)  # type: ignore[union-attr]
    assert gate.waiting == 1
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert gate.waiting == 0


class Counted(TokenBucket):
    """A bucket that counts how often the gate looks at it: the gate's work, whatever
    the machine's speed."""

    looks: ClassVar[int] = 0

    def backlog_wait(self, n: float, now: float) -> float:
        Counted.looks += 1
        return super().backlog_wait(n, now)

    def bounded(self, n: float) -> float:
        Counted.looks += 1
        return super().bounded(n)


async def test_a_long_backlog_costs_a_later_arrival_no_more_than_an_empty_queue() -> None:
    """Thousands of background waiters (a Batch API upload at a vendor's limit): each
    arrival is priced from running totals, not by walking those ahead of it, so queueing
    them is linear and a realtime arrival after them does as little work as with none;
    it still goes first."""
    now = time.monotonic()
    gate = PriorityGate(clock=lambda: now)  # frozen: nothing refills unless given back
    for key, capacity in (("v:rpm", 10.0), ("v:tpm", 10_000.0)):
        gate.configure(
            key, Counted(capacity=capacity, refill_per_s=capacity, tokens=0, updated=now)
        )
    needs = {"v:rpm": 1.0, "v:tpm": 300.0}
    backlog = 5_000
    Counted.looks = 0
    waiters = [
        asyncio.create_task(gate.acquire(needs, Priority.background, deadline=now + 86_400))
        for _ in range(backlog)
    ]
    await asyncio.sleep(0)
    assert gate.waiting == backlog
    assert Counted.looks <= 20 * backlog, "queueing n waiters must be O(n), not O(n^2)"

    async def realtime_arrival() -> tuple[asyncio.Task[None], int]:
        Counted.looks = 0
        task = asyncio.create_task(gate.acquire(needs, Priority.realtime, deadline=now + 3600))
        await asyncio.sleep(0)
        return task, Counted.looks

    first, work = await realtime_arrival()
    assert work <= 20, f"{work} looks for one arrival behind {backlog} waiters"
    # One request's worth comes back: the realtime arrival takes it, not the oldest
    # background waiter.
    gate.settle("v:rpm", estimated=1, used=0)
    gate.settle("v:tpm", estimated=300, used=0)
    await asyncio.sleep(0)
    assert first.done() and first.exception() is None and gate.waiting == backlog
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert gate.waiting == 0
    # The same arrival at an empty gate does the same work.
    gate.bucket("v:rpm").tokens = gate.bucket("v:tpm").tokens = 0  # type: ignore[union-attr]
    alone, empty_work = await realtime_arrival()
    assert work <= empty_work + 4
    alone.cancel()
    await asyncio.gather(alone, return_exceptions=True)


async def test_a_grant_cancelled_in_the_same_tick_gives_its_tokens_back() -> None:
    """The gate grants a waiter and its client's cancel lands before the waiter's task
    runs: no call goes out, so the tokens the grant spent go back to the bucket."""
    now = time.monotonic()
    gate = PriorityGate(clock=lambda: now)
    gate.configure("v:tpm", TokenBucket(capacity=100, refill_per_s=1.0, tokens=0, updated=now))
    task = asyncio.create_task(gate.acquire({"v:tpm": 50}, Priority.realtime, deadline=now + 99))
    await asyncio.sleep(0)
    assert gate.waiting == 1
    gate.settle("v:tpm", estimated=100, used=0)  # 100 back: the waiter is granted 50...
    task.cancel()  # ...and cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gate.bucket("v:tpm").tokens == pytest.approx(100)  # type: ignore[union-attr]
    assert gate.waiting == 0
