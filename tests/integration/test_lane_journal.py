"""The lane journal on the real Redis: leases, adoption after a lapse, carried requests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from schemas.config import Candidate
from tables.lane_journal import LaneJournal, VendorBatch
from tests.support.envelopes import request_envelope


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
