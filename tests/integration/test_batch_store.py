"""The Batch API's store on the real Redis: tenants, idempotent results, finishing, cancel,
and a clear 503 when Redis is gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agents.batch_results import cancelled, record_reply
from gateway.auth import Caller
from gateway.batch_submit import Line, submit
from gateway.relay import Options
from schemas.batches import (
    BatchObject,
    OutputLine,
    OutputResponse,
    RequestCounts,
    line_correlation,
    new_id,
)
from schemas.config import TenantConfig
from schemas.envelope import ReplyEvent
from schemas.errors import (
    BadRequest,
    DeadlineExceeded,
    RelayError,
    StoreUnavailable,
    VendorBadRequest,
)
from tables.batches import EXPIRY_GRACE_S, MESSAGE_BATCHES, BatchStore, output_file_id
from tests.support.envelopes import request_envelope

RESULTS = "t.batch-results"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield BatchStore(client, f"t{uuid.uuid4().hex[:8]}", retention_s=600)
    await client.aclose()


async def new_batch(
    store: BatchStore,
    tenant: str,
    custom_ids: list[str],
    expires_at: int | None = None,
    endpoint: str = "/v1/chat/completions",
) -> BatchObject:
    batch = BatchObject(
        id=new_id("batch_"),
        endpoint=endpoint,
        input_file_id="file-x",
        status="in_progress",
        created_at=1,
        expires_at=expires_at,
        request_counts=RequestCounts(total=len(custom_ids)),
    )
    await store.create(tenant, batch, custom_ids)
    return batch


def answer(batch: BatchObject, index: int, text: str) -> ReplyEvent:
    body = {"choices": [{"message": {"content": text}}]}
    return ReplyEvent(correlation_id=line_correlation(batch.id, index), kind="final", body=body)


def failure(batch: BatchObject, index: int, err: RelayError) -> ReplyEvent:
    correlation_id = line_correlation(batch.id, index)
    return ReplyEvent(correlation_id=correlation_id, kind="error", error=err.to_dict())


async def test_files_belong_to_their_tenant(store: BatchStore) -> None:
    meta = await store.put_file("acme", "in.jsonl", "batch", b'{"a": 1}\n')
    assert (await store.file("acme", meta.id)) == meta
    assert await store.content("acme", meta.id) == b'{"a": 1}\n'
    assert await store.file("other", meta.id) is None
    assert await store.content("other", meta.id) is None
    assert [f.id for f in await store.files("acme")] == [meta.id]
    assert not await store.delete_file("other", meta.id)
    assert await store.delete_file("acme", meta.id)
    assert await store.file("acme", meta.id) is None


async def test_each_line_counts_once_and_the_last_one_completes_the_batch(
    store: BatchStore,
) -> None:
    batch = await new_batch(store, "acme", ["a", "b", "c"])
    assert await record_reply(store, answer(batch, 0, "first"))
    assert await record_reply(store, answer(batch, 0, "replayed")) is None  # a replay
    assert await record_reply(store, failure(batch, 2, VendorBadRequest("max_tokens too large")))
    half = await store.batch("acme", batch.id)
    assert half is not None and half.status == "in_progress"
    assert half.output_file_id is None and half.request_counts.completed == 1

    assert await record_reply(store, answer(batch, 1, "second"))
    done = await store.batch("acme", batch.id)
    assert done is not None and done.status == "completed" and done.completed_at
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.output_file_id and done.error_file_id

    out = [orjson.loads(x) for x in (await store.content("acme", done.output_file_id)).splitlines()]
    assert [
        (x["custom_id"], x["response"]["body"]["choices"][0]["message"]["content"]) for x in out
    ] == [
        ("a", "first"),
        ("b", "second"),
    ]
    [err] = [
        orjson.loads(x) for x in (await store.content("acme", done.error_file_id)).splitlines()
    ]
    assert err["custom_id"] == "c" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["code"] == "vendor_bad_request"
    assert (await store.file("acme", done.output_file_id)).purpose == "batch_output"
    assert await store.content("other", done.output_file_id) is None
    assert await store.batch("other", batch.id) is None


async def test_a_finished_batchs_files_are_listed_and_can_be_deleted(store: BatchStore) -> None:
    upload = await store.put_file("acme", "in.jsonl", "batch", b"{}\n")
    batch = await new_batch(store, "acme", ["a", "b"])
    assert [f.id for f in await store.files("acme")] == [upload.id], "nothing to list yet"
    await record_reply(store, answer(batch, 0, "first"))
    await record_reply(store, failure(batch, 1, VendorBadRequest("max_tokens too large")))
    done = await store.batch("acme", batch.id)
    assert done is not None and done.output_file_id and done.error_file_id

    listed = {f.id: f for f in await store.files("acme")}
    assert set(listed) == {upload.id, done.output_file_id, done.error_file_id}
    for file_id in (done.output_file_id, done.error_file_id):
        assert listed[file_id].purpose == "batch_output"
        assert listed[file_id].bytes == len(await store.content("acme", file_id) or b"")
    created = [f.created_at for f in await store.files("acme")]
    assert created == sorted(created, reverse=True), "newest first"
    assert await store.files("other") == []

    assert not await store.delete_file("other", done.output_file_id)
    assert await store.delete_file("acme", done.output_file_id)
    assert await store.file("acme", done.output_file_id) is None
    assert await store.content("acme", done.output_file_id) is None
    assert not await store.delete_file("acme", done.output_file_id), "already gone"
    assert {f.id for f in await store.files("acme")} == {upload.id, done.error_file_id}
    still = await store.batch("acme", batch.id)
    assert still is not None and still.output_file_id == done.output_file_id  # as OpenAI
    assert await store.content("acme", done.error_file_id), "the other file stays"
    assert [line.custom_id for line in await store.lines(batch.id)] == ["a", "b"]


async def test_a_message_batch_has_results_not_files(store: BatchStore) -> None:
    """Anthropic's Message Batches share the store, but their answers are read at their
    results URL: no output file shows up among the tenant's OpenAI files."""
    batch = await new_batch(store, "acme", ["a", "b"], endpoint=MESSAGE_BATCHES)
    await record_reply(store, answer(batch, 0, "first"))
    await record_reply(store, failure(batch, 1, VendorBadRequest("max_tokens too large")))
    done = await store.batch("acme", batch.id)
    assert done is not None and done.status == "completed"
    assert (done.output_file_id, done.error_file_id) == (None, None)
    assert await store.files("acme") == []
    for kind in ("output", "errors"):
        assert await store.content("acme", output_file_id(batch.id, kind)) is None
        assert not await store.delete_file("acme", output_file_id(batch.id, kind))
    assert [line.custom_id for line in await store.lines(batch.id)] == ["a", "b"]


async def test_a_cancelled_batch_ends_cancelled_once_every_line_is_in(store: BatchStore) -> None:
    batch = await new_batch(store, "acme", ["a", "b"])
    env = request_envelope(correlation_id=line_correlation(batch.id, 1), reply_to=RESULTS)
    assert not await cancelled(store, env, RESULTS)
    assert await record_reply(store, answer(batch, 0, "done before the cancel"))
    stopping = await store.cancel("acme", batch.id)
    assert stopping is not None and stopping.status == "cancelling" and stopping.cancelling_at
    assert await cancelled(store, env, RESULTS)
    other = request_envelope(correlation_id=line_correlation(batch.id, 1), reply_to="elsewhere")
    assert not await cancelled(store, other, RESULTS), "only the batch API's own lines"

    line = OutputLine(
        custom_id="b", response=OutputResponse(status_code=499, request_id="r", body={})
    )
    assert await store.record(batch.id, 1, line)
    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "cancelled" and ended.cancelled_at
    assert ended.output_file_id and ended.error_file_id


async def test_a_result_for_an_unknown_batch_is_dropped(store: BatchStore) -> None:
    ghost = ReplyEvent(correlation_id="batch_gone/0", kind="final", body={})
    assert not await record_reply(store, ghost)
    assert await store.record("batch_gone", 0, OutputLine(custom_id="x")) is None


async def test_without_redis_the_store_says_so() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    store = BatchStore(dead, "t", retention_s=60)
    with pytest.raises(StoreUnavailable):
        await store.put_file("acme", "in.jsonl", "batch", b"{}")
    with pytest.raises(StoreUnavailable):
        await store.batch("acme", "batch_x")
    env = request_envelope(correlation_id="batch_x/0", reply_to=RESULTS)
    assert not await cancelled(store, env, RESULTS), "unknown: the line runs"
    await dead.aclose()


async def test_a_cancel_after_the_last_line_leaves_the_batch_finished(store: BatchStore) -> None:
    batch = await new_batch(store, "acme", ["a"])
    assert await record_reply(store, answer(batch, 0, "done"))
    after = await store.cancel("acme", batch.id)
    assert after is not None and after.status == "completed" and after.cancelling_at is None


async def test_a_batch_whose_lines_expired_is_expired(store: BatchStore) -> None:
    batch = await new_batch(store, "acme", ["a", "b"])
    assert await record_reply(store, answer(batch, 0, "in time"))
    assert await record_reply(store, failure(batch, 1, DeadlineExceeded("too late")))
    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "expired" and ended.expired_at
    assert ended.output_file_id and ended.error_file_id, "what ran in time is kept"
    assert await store.outcomes(batch.id) == {
        "succeeded": 1,
        "errored": 0,
        "canceled": 0,
        "expired": 1,
    }


async def test_lists_are_newest_first_and_forget_what_expired(store: BatchStore) -> None:
    made = [await new_batch(store, "acme", ["a"]) for _ in range(6)]  # within one second
    assert [b.id for b in await store.batches("acme")] == [b.id for b in reversed(made)]
    await store.delete_batch("acme", made[0].id)
    await store.redis.delete(store._batch(made[1].id))  # as if it expired
    assert [b.id for b in await store.batches("acme")] == [b.id for b in reversed(made[2:])]
    assert await store.redis.zcard(store._index("batches", "acme")) == 4


async def test_a_batch_past_its_window_expires_the_lines_still_out(store: BatchStore) -> None:
    """Whatever became of them (a worker that died holding them), a batch ends."""
    past = int(time.time()) - EXPIRY_GRACE_S - 1
    batch = await new_batch(store, "acme", ["a", "b", "c"], expires_at=past)
    assert await record_reply(store, answer(batch, 1, "made it"))
    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "expired" and ended.expired_at
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1, 2)
    errors = (await store.content("acme", ended.error_file_id or "")) or b""
    assert [orjson.loads(x)["custom_id"] for x in errors.splitlines()] == ["a", "c"]
    assert {orjson.loads(x)["error"]["code"] for x in errors.splitlines()} == {"batch_expired"}


async def test_a_batch_past_its_window_ends_when_its_window_did(store: BatchStore) -> None:
    """Not whenever someone first looked: expired_at (and so the output files'
    created_at) is the window's end; a batch cancelled before then ends cancelled then."""
    past = int(time.time()) - EXPIRY_GRACE_S - 3600
    batch = await new_batch(store, "acme", ["a", "b"], expires_at=past)
    assert await record_reply(store, answer(batch, 0, "made it"))
    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "expired"
    assert ended.expired_at == past and ended.ended_at == past
    files = {f.id: f.created_at for f in await store.files("acme")}
    assert files == {ended.output_file_id: past, ended.error_file_id: past}

    late = await new_batch(store, "acme", ["a", "b"], expires_at=past)
    too_late = await store.cancel("acme", late.id)
    assert too_late is not None and too_late.status == "expired" and too_late.expired_at == past
    cancelled_before = await new_batch(store, "acme", ["a", "b"], expires_at=past)
    await store.redis.hset(
        store._batch(cancelled_before.id),
        mapping={"status": "cancelling", "cancelling_at": past - 60},
    )
    ended = await store.batch("acme", cancelled_before.id)
    assert ended is not None and ended.status == "cancelled" and ended.cancelled_at == past
    assert await store.outcomes(cancelled_before.id) == {
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 2,
    }


async def test_expiring_a_large_batch_takes_a_few_redis_calls_whoever_polls(
    store: BatchStore,
) -> None:
    """Every line still out is recorded in one call, not one call a line, and pollers
    arriving at once (or a list) do not each go over the lines again."""
    ids = [f"c{i}" for i in range(2000)]
    past = int(time.time()) - EXPIRY_GRACE_S - 1
    batch = await new_batch(store, "acme", ids, expires_at=past)
    assert await record_reply(store, answer(batch, 7, "made it"))
    calls: list[str] = []
    send = store.redis.execute_command

    async def counted(*args: object, **kw: object) -> object:
        calls.append(str(args[0]))
        return await send(*args, **kw)

    store.redis.execute_command = counted  # type: ignore[method-assign]
    polled = await asyncio.gather(*(store.batch("acme", batch.id) for _ in range(5)))
    listed = await store.batches("acme")
    assert all(b is not None and b.status == "expired" for b in [*polled, *listed])
    assert len(calls) < 30, calls
    assert calls.count("EVALSHA") <= 5
    ended = polled[0]
    assert ended is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (1, 1999)
    assert (await store.outcomes(batch.id))["expired"] == 1999
    lines = await store.lines(batch.id)
    assert [line.custom_id for line in lines] == ids
    assert len({line.id for line in lines}) == 2000 and all(
        line.id.startswith("batch_req_") for line in lines
    )


async def test_expired_lines_keep_their_custom_ids_whatever_they_hold(store: BatchStore) -> None:
    odd = ['quote " and \\ slash /', "ünïcode ✓ 😀", "line\nbreak\ttab", "\u2028"]
    batch = await new_batch(store, "acme", odd, expires_at=1)
    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "expired"
    lines = await store.lines(batch.id)
    assert [line.custom_id for line in lines] == odd
    assert all(line.error is not None and line.error.code == "batch_expired" for line in lines)


async def test_a_running_batch_is_kept_from_its_last_line_not_its_creation(
    store: BatchStore,
) -> None:
    """Each line recorded keeps every key of its batch for the retention from then (and
    the line that ends it its tenant's list too): a batch that runs longer than its
    keys were first given loses neither its state nor its custom ids."""
    batch = await new_batch(store, "acme", ["a", "b"])
    keys = [store._batch(batch.id), store._ids(batch.id)]
    index = store._index("batches", "acme")
    for key in [*keys, index]:
        await store.redis.pexpire(key, 1000)  # as if created nearly retention_s ago
    assert await record_reply(store, answer(batch, 0, "first"))
    for key in keys:
        assert await store.redis.pttl(key) > 500_000, key
    assert await record_reply(store, answer(batch, 1, "last"))
    assert await store.redis.pttl(index) > 500_000, "listed as long as it is kept"

    overdue = await new_batch(store, "acme", ["a"], expires_at=1)
    for key in (store._batch(overdue.id), store._ids(overdue.id), index):
        await store.redis.pexpire(key, 1000)
    ended = await store.batch("acme", overdue.id)
    assert ended is not None and ended.status == "expired"
    for key in (store._batch(overdue.id), store._ids(overdue.id), store._out(overdue.id), index):
        assert await store.redis.pttl(key) > 500_000, key


class _Counting(aioredis.Connection):
    """A connection noting the name of every command it sends, in a pipeline or not."""

    sent: list[str]

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        self.sent.append(name.decode() if isinstance(name, bytes) else str(name))
        return super().pack_command(*args)


@pytest.fixture
async def counted_store(redis_url: str) -> AsyncIterator[tuple[BatchStore, list[str]]]:
    """A store on a database of its own (11), counting the commands it sends; its keys
    are deleted after."""
    sent: list[str] = []
    counting = type("Counting", (_Counting,), {"sent": sent})
    url = urlsplit(redis_url)._replace(path="/11").geturl()
    client = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool.from_url(url, connection_class=counting)
    )
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield BatchStore(client, prefix, retention_s=600), sent
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


def _fake_relay() -> Any:
    """As much of a Relay as ``submit`` uses, with a broker that takes nothing."""

    async def publish_all(envs: list[Any]) -> list[Exception | None]:
        return [RuntimeError("no broker") for _ in envs]

    topics = SimpleNamespace(batch_results=SimpleNamespace(name=RESULTS))
    return SimpleNamespace(
        bus=SimpleNamespace(publish_all=publish_all, topics=topics),
        envelope=lambda *args, **kw: object(),
    )


async def test_a_batchs_refused_lines_cost_the_same_redis_calls_however_many(
    counted_store: tuple[BatchStore, list[str]],
) -> None:
    """Lines refused at creation (and lines the broker did not take) are recorded in one
    call each kind, not one call a line: a 50k-line batch of bad lines is no 50k round
    trips inside one HTTP request."""
    store, sent = counted_store
    who = Caller(tenant="acme", key_id="k", policy=cast(TenantConfig, None))

    async def commands_for(refused: int, unqueued: int) -> tuple[BatchObject, list[str]]:
        lines = [
            Line(custom_id=f"r{i}", refused=BadRequest("no such model")) for i in range(refused)
        ]
        lines += [Line(custom_id=f"u{i}", body={"model": "m"}) for i in range(unqueued)]
        batch = BatchObject(
            id=new_id("batch_"),
            endpoint="/v1/chat/completions",
            input_file_id="file-x",
            status="in_progress",
            created_at=1,
            request_counts=RequestCounts(total=len(lines)),
        )
        sent.clear()
        await submit(_fake_relay(), store, who, Options(), batch, "chat", lines)
        return batch, list(sent)

    await commands_for(1, 1)  # the scripts loaded, the connection made
    _, few = await commands_for(2, 2)
    batch, many = await commands_for(1000, 1000)
    assert many == few, (few, many)
    assert len(many) < 20, many

    ended = await store.batch("acme", batch.id)
    assert ended is not None and ended.status == "completed"
    assert (ended.request_counts.completed, ended.request_counts.failed) == (0, 2000)
    assert (await store.outcomes(batch.id))["errored"] == 2000
    lines = await store.lines(batch.id)
    assert [line.custom_id for line in lines[998:1002]] == ["r998", "r999", "u0", "u1"]
    assert {line.response.status_code for line in lines if line.response} == {400, 503}


async def test_recording_many_lines_at_once_keeps_each_lines_first_answer(
    store: BatchStore,
) -> None:
    batch = await new_batch(store, "acme", ["a", "b", "c"])
    assert await record_reply(store, answer(batch, 0, "first"))

    def refused(custom_id: str) -> OutputLine:
        response = OutputResponse(status_code=400, request_id="r", body={"error": {}})
        return OutputLine(custom_id=custom_id, response=response)

    assert await store.record_many(batch.id, {0: refused("a"), 1: refused("b")})
    assert not await store.record_many(batch.id, {0: refused("a"), 1: refused("b")})
    half = await store.batch("acme", batch.id)
    assert half is not None and half.status == "in_progress"
    assert (half.request_counts.completed, half.request_counts.failed) == (1, 1)
    assert await store.outcomes(batch.id) == {
        "succeeded": 1,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert [line.ok for line in await store.lines(batch.id)] == [True, False]

    assert await store.record_many(batch.id, {2: refused("c")})
    done = await store.batch("acme", batch.id)
    assert done is not None and done.status == "completed" and done.completed_at
    assert await store.record_many("batch_gone", {0: refused("x")}) is None
    assert not await store.record_many(batch.id, {})
