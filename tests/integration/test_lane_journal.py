"""The lane journal on the real Redis: leases, adoption after a lapse, carried requests,
and the batch lane on it: no batch answered twice, none lost when a worker stops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agents.adapters.base import VendorCall, VendorResult
from agents.batch_lane import BatchLane
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import Priority, RequestEnvelope
from schemas.usage import Usage
from tables.lane_journal import LaneJournal, VendorBatch
from tests.support.envelopes import request_envelope
from tests.unit.test_batch_lane import kill

CAND = Candidate(vendor="v", model="m")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_lapsed_lease_is_adopted_once_and_the_old_holder_stands_down(
    redis: aioredis.Redis,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = LaneJournal(redis, prefix, "worker-a", lease_s=0.3)
    second = LaneJournal(redis, prefix, "worker-b", lease_s=0.3)
    envs = [request_envelope(), request_envelope()]
    batch = VendorBatch(
        id="vb-1", candidate=Candidate(vendor="v", model="m"), key_index=1, envelopes=envs
    )
    await first.submitted(batch)
    ids = [e.correlation_id for e in envs]
    assert await second.carried([*ids, "other"]) == set(ids)
    assert await second.adopt() == [], "its worker holds the lease"
    assert await first.renew("vb-1")

    await asyncio.sleep(0.4)  # worker-a stops renewing: it died
    [adopted] = await second.adopt()
    assert adopted == batch and adopted.key_index == 1
    assert await second.adopt() == [], "adopted once"
    assert not await first.renew("vb-1"), "worker-a, back, must not answer it too"
    assert await second.renew("vb-1")

    await second.done(adopted)
    assert await second.carried(ids) == set()
    await asyncio.sleep(0.4)
    assert await first.adopt() == []


class SlowBatches:
    """A vendor batch API whose batches run ``polls`` polls, then answer every call."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.calls: list[tuple[str, VendorCall]] = []

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        self.calls = calls
        return f"vb-{uuid.uuid4().hex[:8]}"

    async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any] | None:
        self.polls -= 1
        if self.polls > 0:
            return None
        return {cid: VendorResult(body={"id": cid}, usage=Usage()) for cid, _ in self.calls}

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        raise AssertionError("nothing here cancels")


class FlakyJournal(LaneJournal):
    """Redis drops the first ``failures`` attempts to strike a batch off."""

    failures = 2

    async def done(self, batch: VendorBatch) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RedisError("connection reset")
        await super().done(batch)


def lane(journal: LaneJournal, vendor: SlowBatches, got: list[str]) -> BatchLane:
    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        await asyncio.sleep(0.1)  # a reply takes a moment to go out
        got.append(env.correlation_id)

    rule = LaneRule(max_size=2, poll_s=0.05, lease_s=0.3)
    return BatchLane({"v": vendor}, {"v": KeyPool(["k"])}, rule, deliver, journal=journal)


def background() -> list[RequestEnvelope]:
    return [request_envelope(priority=Priority.background) for _ in range(2)]


def started(
    redis: aioredis.Redis, journal: type[LaneJournal], polls: int
) -> tuple[BatchLane, list[str], str, list[RequestEnvelope]]:
    """A lane (owner w1) with two background requests submitted: the lane, what it
    delivered, the journal's prefix and the requests."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    got: list[str] = []
    mine = lane(journal(redis, prefix, "w1", lease_s=0.3), SlowBatches(polls=polls), got)
    envs = background()
    for env in envs:
        mine.submit(env, CAND)
    return mine, got, prefix, envs


async def test_a_worker_that_stalled_past_its_lease_does_not_answer_twice(
    redis: aioredis.Redis,
) -> None:
    mine, got, prefix, envs = started(redis, LaneJournal, polls=12)
    await asyncio.sleep(0.2)  # submitted and journaled; now its lease lapses (a stall)
    await redis.delete(*await redis.keys(f"{prefix}:lane:lease:*"))
    await mine.adopt()  # its own timer finds the lapsed lease: it follows it already
    await asyncio.wait_for(asyncio.gather(*mine._tasks), timeout=5)
    assert sorted(got) == sorted(e.correlation_id for e in envs), "each answered once"


async def test_an_answered_batch_is_struck_off_even_through_redis_errors(
    redis: aioredis.Redis,
) -> None:
    mine, got, prefix, _ = started(redis, FlakyJournal, polls=1)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(asyncio.gather(*mine._tasks), timeout=10)
    assert len(got) == 2
    other = LaneJournal(redis, prefix, "w2", lease_s=0.3)
    await asyncio.sleep(0.4)
    assert await other.adopt() == [], "nothing left for another worker to answer again"


async def test_a_batch_whose_worker_stopped_stays_for_another_to_adopt(
    redis: aioredis.Redis,
) -> None:
    mine, got, prefix, _ = started(redis, LaneJournal, polls=10_000)
    await asyncio.sleep(0.2)
    running = mine.flush_all()
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    assert got == [], "a stopped worker answers nothing"
    await asyncio.sleep(0.4)
    [adopted] = await LaneJournal(redis, prefix, "w2", lease_s=0.3).adopt()
    assert len(adopted.envelopes) == 2


async def test_a_slow_delivery_keeps_its_lease_so_no_other_worker_answers_again(
    redis: aioredis.Redis,
) -> None:
    """Delivering takes longer than the lease (a reply topic slow to take answers): the
    lease is renewed all along, so a second worker looking for lapsed batches finds none."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    got: list[str] = []

    async def slow_deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        await asyncio.sleep(0.2)
        got.append(env.correlation_id)

    rule = LaneRule(max_size=4, poll_s=0.05, lease_s=0.3)
    mine = BatchLane(
        {"v": SlowBatches(polls=1)}, {"v": KeyPool(["k"])}, rule, slow_deliver,
        journal=LaneJournal(redis, prefix, "w1", lease_s=0.3),
    )  # fmt: skip
    other = BatchLane(
        {"v": SlowBatches(polls=1)}, {"v": KeyPool(["k"])}, rule, slow_deliver,
        journal=LaneJournal(redis, prefix, "w2", lease_s=0.3),
    )  # fmt: skip
    envs = [request_envelope(priority=Priority.background) for _ in range(4)]
    for env in envs:
        mine.submit(env, CAND)
    adopted = 0
    while mine._tasks:
        adopted += await other.adopt()
        await asyncio.sleep(0.05)
    assert adopted == 0
    assert sorted(got) == sorted(e.correlation_id for e in envs), "each answered once"


async def test_a_lease_lost_to_a_redis_restart_is_taken_back_not_abandoned(
    redis: aioredis.Redis,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    journal = LaneJournal(redis, prefix, "w1", lease_s=5)
    batch = VendorBatch(id="vb-9", candidate=CAND, key_index=0, envelopes=[request_envelope()])
    await journal.submitted(batch)
    await redis.delete(f"{prefix}:lane:lease:vb-9")  # as after a restart without persistence
    assert await journal.renew("vb-9"), "nobody holds it: this worker takes it back"
    other = LaneJournal(redis, prefix, "w2", lease_s=5)
    assert not await other.renew("vb-9")
    await other.done(batch)  # not its to strike out
    assert await journal.holds("vb-9")
    await journal.done(batch)
    assert not await journal.holds("vb-9") and await journal.adopt() == []


async def test_an_answered_batch_is_never_taken_back(redis: aioredis.Redis) -> None:
    """A worker that stalled while another adopted and answered its batch finds, on
    waking, no lease to take back: the batch is answered once."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    stalled = LaneJournal(redis, prefix, "w1", lease_s=5)
    adopter = LaneJournal(redis, prefix, "w2", lease_s=5)
    batch = VendorBatch(id="vb-7", candidate=CAND, key_index=0, envelopes=[request_envelope()])
    await stalled.submitted(batch)
    await redis.delete(f"{prefix}:lane:lease:vb-7")  # w1 stalls past its lease
    [adopted] = await adopter.adopt()
    await adopter.done(adopted)
    assert not await stalled.renew("vb-7"), "answered: not taken back"


async def test_a_worker_dying_mid_delivery_leaves_its_adopter_only_the_rest(
    redis: aioredis.Redis,
) -> None:
    """Killed while delivering the third of four answers: the adopter answers (and so
    meters) the third and fourth, and striking the batch out leaves nothing behind."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    delivered: list[str] = []
    dying, killed = asyncio.Event(), asyncio.Event()

    async def dies_at_the_third(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        if len(delivered) == 2:
            dying.set()
            await killed.wait()
        delivered.append(env.correlation_id)

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        delivered.append(env.correlation_id)

    rule = LaneRule(max_size=4, poll_s=0.05, lease_s=0.3)
    mine = BatchLane(
        {"v": SlowBatches(polls=1)}, {"v": KeyPool(["k"])}, rule, dies_at_the_third,
        journal=LaneJournal(redis, prefix, "w1", lease_s=0.3),
    )  # fmt: skip
    envs = [request_envelope(priority=Priority.background) for _ in range(4)]
    for env in envs:
        mine.submit(env, CAND)
    await asyncio.wait_for(dying.wait(), timeout=5)
    await kill(mine)

    await asyncio.sleep(0.4)  # its lease lapses
    adopter = BatchLane(
        {"v": SlowBatches(polls=1)}, {"v": KeyPool(["k"])}, rule, deliver,
        journal=LaneJournal(redis, prefix, "w2", lease_s=0.3),
    )  # fmt: skip
    assert await adopter.adopt() == 1
    await asyncio.wait_for(asyncio.gather(*adopter._tasks), timeout=5)
    assert sorted(delivered) == sorted(e.correlation_id for e in envs), "each answered once"
    assert await redis.keys(f"{prefix}:lane:delivered:*") == []
    assert await redis.keys(f"{prefix}:lane:batch:*") == []


async def test_each_request_s_candidate_is_kept_in_the_journal(redis: aioredis.Redis) -> None:
    """An adopter reads back each request's own candidate (two aliases may price the
    vendor model differently); an entry written with one candidate gives it to all."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    journal = LaneJournal(redis, prefix, "w1", lease_s=0.1)
    cheap, dear = Candidate(vendor="v", model="m", input_per_1m=1), CAND
    envs = [request_envelope(), request_envelope()]
    batch = VendorBatch(
        id="vb-c", candidate=dear, key_index=0, envelopes=envs, candidates=[cheap, dear]
    )
    await journal.submitted(batch)
    old = VendorBatch(id="vb-o", candidate=dear, key_index=0, envelopes=envs)
    await journal.submitted(old)
    await redis.set(  # as an older worker wrote it: no candidates at all
        f"{prefix}:lane:batch:vb-o", old.model_dump_json(exclude={"candidates"})
    )
    await asyncio.sleep(0.2)
    adopter = LaneJournal(redis, prefix, "w2", lease_s=5)
    found = {b.id: b.requests() for b in await adopter.adopt()}
    assert found == {"vb-c": [(envs[0], cheap), (envs[1], dear)], "vb-o": [(e, dear) for e in envs]}
    for b in (batch, old):
        await adopter.done(b)
