"""Vendor batches in flight, written down so that no worker's death loses them.

A vendor batch can run for hours, far longer than a worker may live.  Each one the batch
lane submits is recorded here (the requests it carries, its vendor and model, the index
of the key it used — never the key) and leased by the worker polling it, which renews the
lease with every poll.  A worker that dies stops renewing; once the lease lapses, another
worker (or the same one, restarted) adopts the batch, polls it to the end and delivers
its answers.  Only the lease holder delivers, so nothing is answered or metered twice;
and each answer delivered is noted as it goes, so a batch adopted from a worker that died
(or lost Redis) while delivering is answered only where that worker had not.

Redis holds the journal, as it holds the Batch API's store; without Redis the lane runs
on unjournaled, as before, and says so in its log.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from schemas.config import Candidate
from schemas.envelope import RequestEnvelope

# Extends a lease for its holder, and takes back one nobody holds (it lapsed during a
# Redis outage, or Redis restarted empty) rather than abandon a batch no one else polls.
_RENEW = """
-- (A batch struck out as answered has a tombstone: its lease is never taken back.)
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Strikes a batch out only for its holder (or when nobody holds it): a worker whose lease
# lapsed and was adopted must not delete the adopter's lease and entry.
_DONE = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[6])
redis.call('SET', KEYS[5], 1, 'EX', 172800)
redis.call('SREM', KEYS[3], ARGV[2])
for i = 3, #ARGV do redis.call('SREM', KEYS[4], ARGV[i]) end
return 1
"""


class VendorBatch(BaseModel):
    """One vendor batch in flight: enough to poll it and answer its requests."""

    id: str
    candidate: Candidate  # the vendor and model it went to (its first request's candidate)
    key_index: int
    envelopes: list[RequestEnvelope]
    # When the vendor took it (epoch seconds; 0 in entries written before it was kept):
    # its poller gives up on a batch it cannot read back only once the vendor's window
    # has passed.
    submitted_at: float = 0.0
    # Each request's own candidate, in the order of ``envelopes``: all of one vendor and
    # model, but two aliases may price it differently, and each request is billed and
    # cached as its own alias has it.  Empty in entries written before they were kept.
    candidates: list[Candidate] = Field(default_factory=list)

    def requests(self) -> list[tuple[RequestEnvelope, Candidate]]:
        """Each request with the candidate it is answered with (an entry that kept none
        answers every request with ``candidate``, as it was written to)."""
        if len(self.candidates) != len(self.envelopes):
            return [(env, self.candidate) for env in self.envelopes]
        return list(zip(self.envelopes, self.candidates, strict=True))


class LaneJournal:
    def __init__(self, redis: aioredis.Redis, prefix: str, owner: str, lease_s: float) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:lane:"
        self.owner = owner
        self.lease_ms = int(lease_s * 1000)
        self._renew = redis.register_script(_RENEW)
        self._done = redis.register_script(_DONE)

    def _entry(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def _lease(self, batch_id: str) -> str:
        return f"{self.prefix}lease:{batch_id}"

    def _answered(self, batch_id: str) -> str:
        return f"{self.prefix}done:{batch_id}"  # kept two days: the batch is not taken back

    def _delivered(self, batch_id: str) -> str:
        return f"{self.prefix}delivered:{batch_id}"  # gone with the entry, struck out

    @property
    def _all(self) -> str:
        return f"{self.prefix}batches"

    @property
    def _carried(self) -> str:
        return f"{self.prefix}carried"

    async def submitted(self, batch: VendorBatch) -> None:
        """Write the batch down, leased to this worker."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._entry(batch.id), batch.model_dump_json())
            pipe.set(self._lease(batch.id), self.owner, px=self.lease_ms)
            pipe.sadd(self._all, batch.id)
            pipe.sadd(self._carried, *(env.correlation_id for env in batch.envelopes))
            await pipe.execute()

    async def carried(self, correlation_ids: list[str]) -> set[str]:
        """Those of ``correlation_ids`` already in a vendor batch in flight: requests a
        dead worker took and had sent, consumed again by the worker after it."""
        found = await self.redis.smismember(self._carried, correlation_ids)  # type: ignore[misc]
        return {cid for cid, yes in zip(correlation_ids, found, strict=True) if yes}

    async def renew(self, batch_id: str) -> bool:
        """Extend this worker's lease (taking it back if nobody holds it); False when
        another worker holds it now."""
        return bool(
            await self._renew(
                keys=[self._lease(batch_id), self._answered(batch_id)],
                args=[self.owner, self.lease_ms],
            )
        )

    async def mark_delivered(self, batch_id: str, correlation_ids: list[str]) -> None:
        """Note requests of a batch as answered (and metered): its adopter, should this
        worker die before striking the batch out, does not answer them again."""
        await self.redis.sadd(self._delivered(batch_id), *correlation_ids)  # type: ignore[misc]

    async def delivered(self, batch_id: str) -> set[str]:
        """The requests of a batch noted as answered (none for a batch never delivered,
        or one journaled before answers were noted)."""
        found: set[Any] = await self.redis.smembers(self._delivered(batch_id))  # type: ignore[misc]
        return {raw.decode() for raw in found}

    async def holds(self, batch_id: str) -> bool:
        return await self.redis.get(self._lease(batch_id)) == self.owner.encode()

    async def done(self, batch: VendorBatch) -> None:
        """Strike an answered batch out (not when another worker holds it now)."""
        await self._done(
            keys=[
                self._entry(batch.id),
                self._lease(batch.id),
                self._all,
                self._carried,
                self._answered(batch.id),
                self._delivered(batch.id),
            ],
            args=[self.owner, batch.id, *(env.correlation_id for env in batch.envelopes)],
        )

    async def adopt(self) -> list[VendorBatch]:
        """The batches whose lease lapsed, each now leased to this worker."""
        adopted = []
        ids: set[Any] = await self.redis.smembers(self._all)  # type: ignore[misc]
        for raw_id in ids:
            batch_id = raw_id.decode()
            if not await self.redis.set(
                self._lease(batch_id), self.owner, px=self.lease_ms, nx=True
            ):
                continue  # its worker is alive and polling it
            raw = await self.redis.get(self._entry(batch_id))
            if raw is None:  # finished just now
                await self.redis.srem(self._all, batch_id)
                await self.redis.delete(self._lease(batch_id))
                continue
            adopted.append(VendorBatch.model_validate_json(raw))
        return adopted
