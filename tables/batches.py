"""Where the relay's Batch API keeps its files, batches and results: Redis.

Every gateway replica reads and writes the same store, and the worker's results agent
records each line's answer in it as it comes off the batch-results topic (which keeps
the answers too, so a lost store can be rebuilt by replaying it).  Recording is
idempotent per line, so a replayed result never counts twice, and the line that
completes a batch finishes it in the same atomic step.  Everything expires
``retention_s`` after its last write.

Unlike the response cache, this store is not optional: without Redis the Batch API
answers 503 (``StoreUnavailable``) and the rest of the relay carries on.

Each tenant may keep so many bytes in it at once (``hold``): its uploads, and the
requests of its message batches, count until deleted or expired.  The store never evicts,
so without that one tenant's uploads could fill it and stall every tenant's batches.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

from schemas.batches import (
    COMPLETION_WINDOW_S,
    EXPIRY_GRACE_S,
    BatchObject,
    FileObject,
    LineError,
    OutputLine,
    new_id,
)
from schemas.errors import BadRequest, StoreUnavailable
from tables.cache import REDIS_ERRORS

# Counts each line once (the first answer recorded for it wins), and finishes the batch
# with the lines that complete it (2 then).  Any number of lines in one call (ARGV[3..]:
# index, JSON, outcome for each): a batch's refusals at creation cost one round trip.
# Each call that counts a line keeps every key of its batch for the retention from now: a
# batch running longer than its keys were first given must not lose them half-way.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local counts = {completed = 0, failed = 0, succeeded = 0, errored = 0, canceled = 0,
                expired = 0}
local n = 0
for i = 3, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    n = n + 1
    local outcome = ARGV[i + 2]
    local kind = outcome == 'succeeded' and 'completed' or 'failed'
    counts[kind] = counts[kind] + 1
    counts[outcome] = counts[outcome] + 1
  end
end
if n == 0 then return 0 end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
for _, kind in ipairs({'completed', 'failed'}) do
  if counts[kind] > 0 then redis.call('HINCRBY', KEYS[1], kind, counts[kind]) end
end
for _, outcome in ipairs({'succeeded', 'errored', 'canceled', 'expired'}) do
  if counts[outcome] > 0 then
    redis.call('HINCRBY', KEYS[1], 'outcome:' .. outcome, counts[outcome])
  end
end
local h = redis.call('HMGET', KEYS[1], 'total', 'completed', 'failed', 'status',
                    'outcome:expired')
if tonumber(h[2] or 0) + tonumber(h[3] or 0) >= tonumber(h[1]) then
  if h[4] == 'cancelling' then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', ARGV[1])
  elseif tonumber(h[5] or 0) > 0 then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'expired_at', ARGV[1])
  else
    redis.call('HSET', KEYS[1], 'status', 'completed', 'finalizing_at', ARGV[1],
               'completed_at', ARGV[1])
  end
  return 2
end
return 1
"""
# Cancels a batch only while lines are still out: the last line may have just finished it.
_CANCEL = """
local h = redis.call('HMGET', KEYS[1], 'status', 'total', 'completed', 'failed')
if h[1] ~= 'in_progress' then return 0 end
if tonumber(h[3] or 0) + tonumber(h[4] or 0) >= tonumber(h[2]) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
return 1
"""
# Ends a batch past its window in one step, however many lines it has out: each is
# recorded batch_expired (its JSON made here, ARGV[1] the id's stem, ARGV[2] the error) and
# the batch ends when its window did (ARGV[3]; a cancelled one ARGV[4]).  The status is the
# guard: a batch another poller (or its last line) ended already is left as it is, so
# concurrent pollers cost one cheap look each, not a pass over its lines.  Its keys are kept
# for the retention (ARGV[5]) from its end.
_EXPIRE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'in_progress' and status ~= 'cancelling' then return -1 end
local ids = redis.call('LRANGE', KEYS[3], 0, -1)
local n = 0
for i, custom_id in ipairs(ids) do
  local line = '{"id":"' .. ARGV[1] .. string.format('%08x', i - 1) .. '","custom_id":'
    .. cjson.encode(custom_id) .. ',"response":null,"error":' .. ARGV[2] .. '}'
  n = n + redis.call('HSETNX', KEYS[2], i - 1, line)
end
redis.call('HINCRBY', KEYS[1], 'failed', n)
redis.call('HINCRBY', KEYS[1], 'outcome:expired', n)
if status == 'cancelling' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', ARGV[4])
else
  redis.call('HSET', KEYS[1], 'status', 'expired', 'expired_at', ARGV[3])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
return n
"""
# Counts ``ARGV[3]`` bytes for item ``ARGV[2]`` in a tenant's holds (KEYS[1]: each item's
# bytes and their ``total``), until it is released or ``ARGV[4]`` (ms) comes (KEYS[2]: when
# each hold ends), unless that takes the total past ``ARGV[5]`` (0: no limit).  Holds that
# ended are let go first, a bounded number per call ({-1}: call again).  Returns {1, held}
# when counted, {0, held} when refused (or when only asked, ``ARGV[2]`` empty).  One
# tenant's two keys share a hash tag: one slot of a Redis Cluster.
_HOLD = """
local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 500)
for _, id in ipairs(ended) do
  local n = redis.call('HGET', KEYS[1], id)
  if n then
    redis.call('HINCRBY', KEYS[1], 'total', -tonumber(n))
    redis.call('HDEL', KEYS[1], id)
  end
  redis.call('ZREM', KEYS[2], id)
end
if #ended == 500 then return {-1, 0} end
local held = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if ARGV[2] == '' then return {0, held} end
local n = tonumber(ARGV[3])
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
local limit = tonumber(ARGV[5])
if limit > 0 and held - before + n > limit then return {0, held} end
redis.call('HSET', KEYS[1], ARGV[2], n)
redis.call('HINCRBY', KEYS[1], 'total', n - before)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
local ttl = tonumber(ARGV[4]) - tonumber(ARGV[1])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, held - before + n}
"""
_RELEASE = """
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then
  redis.call('HINCRBY', KEYS[1], 'total', -tonumber(n))
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
"""
# Ends item ``ARGV[1]``'s hold at ``ARGV[2]`` (ms) instead, if it holds one (a message
# batch that ended: its keys stay the retention from now, no longer); ``ARGV[3]``: now.
_REKEEP = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[2]) - tonumber(ARGV[3])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""
MESSAGE_BATCHES = "/v1/messages"  # Anthropic's Message Batches: served at their results URL
GONE_S = 24 * 3600  # how long a deleted file's or batch's place in its lists is kept
_CANCEL_FIELDS = ("cancelling_at", "cancelled_at")


def over_quota(quota: int, held: int, size: int) -> BadRequest:
    """An upload or message batch past its tenant's quota: OpenAI's answer to a full file
    storage (400 ``invalid_request_error``), not a 429 an SDK would retry in vain."""
    return BadRequest(
        f"You have exceeded your storage quota: this tenant may keep {quota} bytes of Batch "
        f"API files and message batches at once; it keeps {held}, and this one is {size}. "
        "Delete files or batches it no longer needs, or wait for them to expire."
    )


def output_file_id(batch_id: str, kind: str) -> str:
    return f"file-{batch_id}-{kind}"


def _output_of(file_id: str) -> tuple[str, str] | None:
    """``(batch id, "output" | "errors")`` for a batch's output file id."""
    if not file_id.startswith("file-batch_"):
        return None
    batch_id, _, kind = file_id.removeprefix("file-").rpartition("-")
    return (batch_id, kind) if kind in ("output", "errors") else None


def _output_file_object(batch: BatchObject, kind: str, size: int) -> FileObject:
    return FileObject(
        id=output_file_id(batch.id, kind),
        bytes=size,
        created_at=batch.ended_at or batch.created_at,
        filename=f"{batch.id}_{kind}.jsonl",
        purpose="batch_output",
    )


Item = TypeVar("Item", FileObject, BatchObject)


def _after_place(items: list[Item], place: float, newest_first: bool = True) -> int:
    """The index in ``items`` (newest first, or oldest first) of the first item listed
    after ``place`` (a ``listed_at``)."""
    for n, item in enumerate(items):
        if (item.listed_at < place) if newest_first else (item.listed_at > place):
            return n
    return len(items)


class BatchStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, retention_s: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:batchapi:"
        self.retention_ms = retention_s * 1000
        self._record = redis.register_script(_RECORD)
        self._cancel = redis.register_script(_CANCEL)
        self._expire_script = redis.register_script(_EXPIRE)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self._rekeep = redis.register_script(_REKEEP)

    # Keys: a batch's keys share a hash tag, so a Redis Cluster keeps them on one node.
    def _file(self, file_id: str) -> str:
        return f"{self.prefix}file:{file_id}"

    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{{{batch_id}}}"

    def _out(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{{{batch_id}}}:out"

    def _ids(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{{{batch_id}}}:ids"

    def _index(self, kind: str, tenant: str) -> str:
        return f"{self.prefix}{kind}:{tenant}"

    def _gone(self, tenant: str) -> str:
        return f"{self.prefix}gone:{tenant}"

    def _holds(self, tenant: str) -> list[str]:
        return [f"{self.prefix}held:{{{tenant}}}", f"{self.prefix}held:{{{tenant}}}:ends"]

    @property
    def batch_kept_s(self) -> int:
        """The longest a batch is kept: its window, its grace, then the retention (a
        message batch's hold, until the batch ends: then the retention from its end)."""
        return COMPLETION_WINDOW_S + EXPIRY_GRACE_S + self.retention_ms // 1000

    # ---- what each tenant keeps -------------------------------------------------------

    async def hold(self, tenant: str, item_id: str, size: int, kept_s: int, quota: int) -> None:
        """Count ``size`` bytes of ``item_id`` (a file, a message batch) against the
        tenant's ``quota`` until it is released (deleted) or ``kept_s`` from now (when
        the store lets it expire); 0: no quota, but still counted.  Refused with
        ``BadRequest`` when the tenant's would go past it (what OpenAI answers a full
        file storage), counting nothing.  Atomic in Redis: replicas that take uploads of
        one tenant at once never count past the quota together."""
        now_ms = int(time.time() * 1000)
        counted, held = await self._count(
            tenant, [now_ms, item_id, size, now_ms + kept_s * 1000, quota]
        )
        if not counted:
            raise over_quota(quota, held, size)

    async def release(self, tenant: str, item_id: str) -> None:
        """Stop counting ``item_id`` against its tenant's quota (deleted, or never kept)."""
        async with self._guard():
            await self._release(keys=self._holds(tenant), args=[item_id])

    async def held(self, tenant: str) -> int:
        """The bytes the tenant keeps now, as its quota counts them."""
        _, held = await self._count(tenant, [int(time.time() * 1000), "", 0, 0, 0])
        return held

    async def _count(self, tenant: str, args: list[str | int]) -> tuple[int, int]:
        """``_HOLD``'s answer for ``args``: counted (1) or not (0), and the bytes held."""
        while True:
            async with self._guard():
                counted, held = await self._hold(keys=self._holds(tenant), args=args)
            if counted != -1:  # (-1: more holds had ended than one call lets go of)
                return int(counted), int(held)

    async def _bury(self, tenant: str, item_id: str, place: float) -> None:
        """Keep a deleted file's or batch's place in its lists a while: a client that
        deletes what it lists pages on from it (``after=<the id it just deleted>``)."""
        async with self._guard() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._gone(tenant), item_id, repr(place))
            pipe.pexpire(self._gone(tenant), GONE_S * 1000)
            await pipe.execute()

    async def place(self, tenant: str, item_id: str) -> float | None:
        """Where a file or batch deleted lately stood in its lists (its ``listed_at``)."""
        async with self._guard() as redis:
            found: Any = await redis.hget(self._gone(tenant), item_id)
        return float(found) if found is not None else None

    async def position(
        self,
        tenant: str,
        items: list[Item],
        cursor: str,
        *,
        before: bool = False,
        newest_first: bool = True,
    ) -> int:
        """Where a page of ``items`` (newest first, or oldest) starts after ``cursor``, or
        ends ``before`` it: also when that item was deleted since (a client deleting what
        it lists), from the place it had; one never listed here ends the paging."""
        ids = [i.id for i in items]
        if cursor in ids:
            return ids.index(cursor) + (0 if before else 1)
        place = await self.place(tenant, cursor)
        if place is None:
            return 0 if before else len(items)
        return _after_place(items, place, newest_first)

    async def _listed_at(self, kind: str, tenant: str, item_id: str) -> float | None:
        async with self._guard() as redis:
            score: Any = await redis.zscore(self._index(kind, tenant), item_id)
        return float(score) if score is not None else None

    # ---- files ------------------------------------------------------------------------

    async def put_file(
        self, tenant: str, filename: str, purpose: str, data: bytes, quota: int = 0
    ) -> FileObject:
        """Keep an upload, counted against the tenant's ``quota`` (``hold``) until it is
        deleted or expires."""
        meta = FileObject(id=new_id("file-"), bytes=len(data), filename=filename, purpose=purpose)
        meta.expires_at = meta.created_at + self.retention_ms // 1000
        key = self._file(meta.id)
        try:
            # In here: a hold counted in Redis whose answer was lost is let go too.
            await self.hold(tenant, meta.id, len(data), self.retention_ms // 1000, quota)
            async with self._guard() as redis, redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key, mapping={"meta": meta.model_dump_json(), "tenant": tenant, "data": data}
                )
                pipe.pexpire(key, self.retention_ms)
                pipe.zadd(self._index("files", tenant), {meta.id: time.time()})
                pipe.pexpire(self._index("files", tenant), self.retention_ms)
                await pipe.execute()
        except BaseException:
            with contextlib.suppress(StoreUnavailable):  # (else it ends with its retention)
                await self.release(tenant, meta.id)
            raise
        return meta

    async def file(self, tenant: str, file_id: str) -> FileObject | None:
        if out := _output_of(file_id):
            batch = await self.batch(tenant, out[0])
            if batch is None or file_id not in (batch.output_file_id, batch.error_file_id):
                return None
            return await self._output_meta(batch, file_id)  # its lines read once, not again
        async with self._guard() as redis:
            meta, owner = await redis.hmget(self._file(file_id), ["meta", "tenant"])
        if meta is None or owner != tenant.encode():
            return None
        return FileObject.model_validate_json(meta)

    async def content(self, tenant: str, file_id: str) -> bytes | None:
        if out := _output_of(file_id):
            made = await self._output_file(*out, await self.batch(tenant, out[0]))
            return made[1] if made else None
        async with self._guard() as redis:
            found: list[Any] = await redis.hmget(self._file(file_id), ["data", "tenant"])
        data, owner = found
        if data is None or owner != tenant.encode():
            return None
        return bytes(data)

    async def files(self, tenant: str) -> list[FileObject]:
        """The tenant's files, newest first: its uploads, and the output and error files
        of its finished batches (until deleted), as OpenAI lists them."""
        index = self._index("files", tenant)
        async with self._guard() as redis:
            scored: list[Any] = await redis.zrevrange(index, 0, -1, withscores=True)
            metas = [await redis.hget(self._file(i.decode()), "meta") for i, _ in scored]
            if gone := [i for (i, _), m in zip(scored, metas, strict=True) if m is None]:
                await redis.zrem(index, *gone)  # expired since they were listed
        found = []
        for (_, score), meta in zip(scored, metas, strict=True):
            if meta is not None:
                found.append(FileObject.model_validate_json(meta))
                found[-1]._listed_at = float(score)
        for batch in await self.batches(tenant):
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id and (output := await self._output_meta(batch, file_id)):
                    found.append(output)  # listed from its created_at
        return sorted(found, key=lambda f: f.listed_at, reverse=True)

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        """Delete an upload, or a batch's output or error file (the batch keeps naming
        it, as OpenAI's does, but it is gone from the file endpoints).

        An upload's bytes stop counting first, then it goes: a delete that fails after
        leaves a file kept uncounted (the tenant's gain), never bytes counted with no file
        left to delete.  Asked for one it no longer has (a retry after such a failure),
        its bytes are let go all the same (``release`` only counts off what the tenant
        holds for that id)."""
        out = _output_of(file_id)
        if (meta := await self.file(tenant, file_id)) is None:
            if not out:
                await self.release(tenant, file_id)
            return False
        place = await self._listed_at("files", tenant, file_id) or meta.listed_at
        if not out:
            await self.release(tenant, file_id)
        async with self._guard() as redis:
            if out:
                await redis.hset(self._batch(out[0]), f"deleted:{out[1]}", 1)
            else:
                await redis.delete(self._file(file_id))
                await redis.zrem(self._index("files", tenant), file_id)
        await self._bury(tenant, file_id, place)
        return True

    async def _output_meta(self, batch: BatchObject, file_id: str) -> FileObject | None:
        """An ended batch's output file as listed, its size kept once it was counted
        (an ended batch's lines no longer change), so a listing reads no lines again."""
        kind = file_id.rpartition("-")[2]
        async with self._guard() as redis:
            deleted, size = await redis.hmget(
                self._batch(batch.id), [f"deleted:{kind}", f"bytes:{kind}"]
            )
        if deleted:
            return None
        if size is None:
            made = await self._output_file(batch.id, kind, batch)
            return made[0] if made else None
        return _output_file_object(batch, kind, int(size))

    async def _output_file(
        self, batch_id: str, kind: str, batch: BatchObject | None
    ) -> tuple[FileObject, bytes] | None:
        """A batch's output (or error) file and its content, made from the lines."""
        if batch is None or output_file_id(batch_id, kind) not in (
            batch.output_file_id,
            batch.error_file_id,
        ):
            return None
        ok = kind == "output"
        async with self._guard() as redis:
            if await redis.hget(self._batch(batch_id), f"deleted:{kind}"):
                return None
        data = b"".join(line.file_line() for line in await self.lines(batch_id) if line.ok == ok)
        async with self._guard() as redis:
            await redis.hset(self._batch(batch_id), f"bytes:{kind}", len(data))
        return _output_file_object(batch, kind, len(data)), data

    async def lines(self, batch_id: str) -> list[OutputLine]:
        """Every line recorded so far, in input order (the caller checked the tenant)."""
        async with self._guard() as redis:
            raw: dict[Any, Any] = await redis.hgetall(self._out(batch_id))
        return [OutputLine.model_validate_json(raw[k]) for k in sorted(raw, key=int)]

    async def outcomes(self, batch_id: str) -> dict[str, int]:
        """Lines recorded so far by Anthropic's outcome: succeeded, errored, canceled,
        expired (the caller checked the tenant)."""
        kinds = ("succeeded", "errored", "canceled", "expired")
        async with self._guard() as redis:
            found: list[Any] = await redis.hmget(
                self._batch(batch_id), [f"outcome:{k}" for k in kinds]
            )
        return {k: int(v or 0) for k, v in zip(kinds, found, strict=True)}

    # ---- batches ----------------------------------------------------------------------

    async def create(self, tenant: str, batch: BatchObject, custom_ids: list[str]) -> None:
        key = self._batch(batch.id)
        state: dict[Any, Any] = {
            "meta": batch.model_dump_json(),
            "tenant": tenant,
            "total": batch.request_counts.total,
            "completed": 0,
            "failed": 0,
            "status": batch.status,
        }
        async with self._guard() as redis, redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=state)
            if custom_ids:
                pipe.rpush(self._ids(batch.id), *custom_ids)
            for k in (key, self._ids(batch.id)):
                pipe.pexpire(k, self.retention_ms)
            pipe.zadd(self._index("batches", tenant), {batch.id: time.time()})
            pipe.pexpire(self._index("batches", tenant), self.retention_ms)
            await pipe.execute()

    async def batch(self, tenant: str, batch_id: str) -> BatchObject | None:
        """The tenant's batch as it stands; one past its window (plus ``EXPIRY_GRACE_S``)
        that still has lines out is expired here and now, whatever became of those lines
        (a worker that died holding them, a vendor batch never polled again)."""
        batch = await self._read(tenant, batch_id)
        if (
            batch is not None
            and batch.status in ("in_progress", "cancelling")
            and batch.expires_at is not None
            and time.time() > batch.expires_at + EXPIRY_GRACE_S
        ):
            await self._expire(batch)
            batch = await self._read(tenant, batch_id)
        return batch

    async def _expire(self, batch: BatchObject) -> None:
        """Record every line still out as ``batch_expired`` and end the batch, in one
        Redis call (a no-op once the batch ended): ``expired_at`` is the end of its
        window, not whenever someone first looked past it; a batch being cancelled ends
        ``cancelled`` then (or when it was cancelled, if that came later)."""
        assert batch.expires_at is not None
        late = LineError(code="batch_expired", message="the batch window ended first")
        stem = new_id("batch_req_")[:-8]  # + each line's index, 8 hex digits
        async with self._guard():
            expired = await self._expire_script(
                keys=[self._batch(batch.id), self._out(batch.id), self._ids(batch.id)],
                args=[
                    stem,
                    late.model_dump_json(),
                    batch.expires_at,
                    max(batch.expires_at, batch.cancelling_at or 0),
                    self.retention_ms,
                ],
            )
        if expired != -1:  # (-1: another poller, or its last line, ended it first)
            await self._ended(batch.id)

    async def _read(self, tenant: str, batch_id: str) -> BatchObject | None:
        async with self._guard() as redis:
            raw: dict[Any, Any] = await redis.hgetall(self._batch(batch_id))
        fields = {k.decode(): v.decode() for k, v in raw.items() if k != b"meta"}
        if b"meta" not in raw or fields.get("tenant") != tenant:
            return None
        batch = BatchObject.model_validate_json(raw[b"meta"])
        batch.status = fields["status"]  # type: ignore[assignment]
        batch.request_counts.completed = int(fields["completed"])
        batch.request_counts.failed = int(fields["failed"])
        for name in ("finalizing_at", "completed_at", "expired_at", *_CANCEL_FIELDS):
            if name in fields:
                setattr(batch, name, int(fields[name]))
        if batch.ended and batch.endpoint != MESSAGE_BATCHES:  # those have results, not files
            if batch.request_counts.completed:
                batch.output_file_id = output_file_id(batch_id, "output")
            if batch.request_counts.failed:
                batch.error_file_id = output_file_id(batch_id, "errors")
        return batch

    async def batches(self, tenant: str) -> list[BatchObject]:
        """The tenant's batches, newest first."""
        index = self._index("batches", tenant)
        async with self._guard() as redis:
            scored: list[Any] = await redis.zrevrange(index, 0, -1, withscores=True)
        found = [await self.batch(tenant, i.decode()) for i, _ in scored]
        if gone := [i for (i, _), b in zip(scored, found, strict=True) if b is None]:
            async with self._guard() as redis:
                await redis.zrem(index, *gone)  # expired since they were listed
        listed = []
        for (_, score), batch in zip(scored, found, strict=True):
            if batch is not None:
                batch._listed_at = float(score)
                listed.append(batch)
        return listed

    async def cancel(self, tenant: str, batch_id: str) -> BatchObject | None:
        """Ask a running batch to stop: lines not yet sent to a vendor are answered with
        ``batch_cancelled``; the batch is ``cancelled`` once every line is accounted for."""
        if await self.batch(tenant, batch_id) is None:
            return None
        async with self._guard():
            await self._cancel(keys=[self._batch(batch_id)], args=[int(time.time())])
        return await self.batch(tenant, batch_id)

    async def delete_batch(self, tenant: str, batch_id: str) -> None:
        """Forget a batch and its results (the caller checked the tenant).  A message
        batch's requests stop counting first, as an upload's do (``delete_file``)."""
        place = await self._listed_at("batches", tenant, batch_id)
        await self.release(tenant, batch_id)
        async with self._guard() as redis:
            await redis.delete(self._batch(batch_id), self._out(batch_id), self._ids(batch_id))
            await redis.zrem(self._index("batches", tenant), batch_id)
        if place is not None:
            await self._bury(tenant, batch_id, place)

    async def cancelled(self, batch_id: str) -> bool:
        """Whether the batch's lines not sent yet are to stay unsent: it was cancelled, or
        it expired (``expired``, or past its window and ``EXPIRY_GRACE_S`` with lines
        still out).  An expired batch takes no more answers, so a vendor call for one of
        its lines would be paid for nothing.  One found past its window is expired here
        and now (each line still out recorded ``batch_expired``, as ``batch`` does), so
        whatever its worker answers such a line after this, the batch says
        ``batch_expired`` for it.  False for a batch the store does not hold."""
        async with self._guard() as redis:
            found: list[Any] = await redis.hmget(self._batch(batch_id), ["status", "meta"])
        status, meta = found
        if status in (b"cancelling", b"cancelled", b"expired"):
            return True
        if status != b"in_progress" or meta is None:
            return False
        batch = BatchObject.model_validate_json(meta)
        if batch.expires_at is None or time.time() <= batch.expires_at + EXPIRY_GRACE_S:
            return False
        await self._expire(batch)
        return True

    async def custom_id(self, batch_id: str, index: int) -> str | None:
        async with self._guard() as redis:
            found: bytes | None = await redis.lindex(self._ids(batch_id), index)  # type: ignore[assignment]
        return found.decode() if found is not None else None

    async def record(self, batch_id: str, index: int, line: OutputLine) -> bool | None:
        """Store one line's result: True when counted now, False when it already was,
        None when the batch is unknown (expired, or never created here)."""
        return await self.record_many(batch_id, {index: line})

    async def record_many(self, batch_id: str, lines: dict[int, OutputLine]) -> bool | None:
        """Store the results of many lines (by index) in one Redis call, each line
        counted only if it has none yet: True when any was counted now, False when none
        was, None when the batch is unknown (expired, or never created here)."""
        if not lines:
            return False
        args: list[Any] = [int(time.time()), self.retention_ms]
        for index, line in lines.items():
            args += [index, line.model_dump_json(), line.outcome]
        async with self._guard():
            done = await self._record(
                keys=[self._batch(batch_id), self._out(batch_id), self._ids(batch_id)],
                args=args,
            )
        if done == 2:  # the lines that ended the batch
            await self._ended(batch_id)
        return None if done == -1 else bool(done)

    async def _ended(self, batch_id: str) -> None:
        """A batch just ended, its keys kept the retention from now: keep it in its
        tenant's list as long, and a message batch's requests counted no longer (their
        hold ran to the end of its window; the batch, once gone, can't be deleted to let
        it go).  The tenant's keys are in other slots of a Redis Cluster: not in the
        scripts."""
        async with self._guard() as redis:
            tenant: Any = await redis.hget(self._batch(batch_id), "tenant")
            if tenant is None:
                return
            await redis.pexpire(self._index("batches", tenant.decode()), self.retention_ms)
            now_ms = int(time.time() * 1000)
            await self._rekeep(
                keys=self._holds(tenant.decode()),
                args=[batch_id, now_ms + self.retention_ms, now_ms],
            )

    def _guard(self) -> _Guard:
        return _Guard(self.redis)


_PASSING = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError)


class _Guard:
    """``async with`` the Redis client, turning its failures into ``StoreUnavailable``."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def __aenter__(self) -> aioredis.Redis:
        return self.redis

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> None:
        if kind is None or not issubclass(kind, REDIS_ERRORS):
            return
        # A command refused for what it asks (a wrong type, a number out of range) will be
        # refused again: that is no outage to wait out.  Refused for the server's state
        # (out of memory, a read-only replica, a cluster failing over) it is one.
        if issubclass(kind, ResponseError) and not issubclass(kind, _PASSING):
            return
        raise StoreUnavailable("the batch store (Redis) is unavailable; try again") from None
