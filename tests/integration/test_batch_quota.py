"""Each tenant's bytes in the Batch API's store, counted in the real Redis: uploads and
message batches past the tenant's quota refused (the SDKs hear a 400), freed when deleted
or expired, counted once however many replicas take uploads at once.  And, on the same
stack of two gateways, a relay key removed from the config file refused by both within
their look interval (RELAY_CONFIG_RELOAD_S), no restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.batches import BatchObject, OutputLine, RequestCounts
from schemas.config import hash_key
from schemas.errors import BadRequest, StoreUnavailable
from tables.batches import EXPIRY_GRACE_S, MESSAGE_BATCHES, BatchStore
from tests.integration.conftest import WORKDIR
from tests.support.stack import DEMO_KEY, Simulator, Stack, example_config

ACME_KEY = "rk-acme-quota-0123456789abcdef01234"
NEW_KEY = "rk-demo-rotated-0123456789abcdef0123"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    client = aioredis.Redis.from_url(redis_url)
    yield BatchStore(client, f"t{uuid.uuid4().hex[:8]}", retention_s=600)
    await client.aclose()


async def test_holds_are_refused_past_the_quota_and_freed_by_release(store: BatchStore) -> None:
    await store.hold("a", "file-1", 60, 600, quota=100)
    with pytest.raises(BadRequest, match="keeps 60, and this one is 50"):
        await store.hold("a", "file-2", 50, 600, quota=100)
    await store.hold("b", "file-3", 100, 600, quota=100)  # another tenant's own
    await store.hold("a", "file-1", 90, 600, quota=100)  # the same item again: replaced
    assert (await store.held("a"), await store.held("b")) == (90, 100)
    await store.release("a", "file-1")
    await store.release("a", "file-1")  # (twice: counted off once)
    assert await store.held("a") == 0
    await store.hold("a", "file-2", 100, 600, quota=100)
    await store.hold("a", "file-4", 10**12, 600, quota=0)  # 0: no limit, still counted
    assert await store.held("a") == 100 + 10**12


async def test_replicas_uploading_at_once_never_count_past_the_quota(store: BatchStore) -> None:
    async def one(i: int) -> bool:
        try:
            await store.hold("a", f"file-{i}", 10, 600, quota=95)
        except BadRequest:
            return False
        return True

    taken = await asyncio.gather(*(one(i) for i in range(30)))
    assert sum(taken) == 9 and await store.held("a") == 90


async def test_what_expired_frees_its_bytes_however_many(store: BatchStore) -> None:
    for start in range(0, 1200, 100):
        await asyncio.gather(*(store.hold("a", f"f{start + i}", 1, 1, 0) for i in range(100)))
    await store.hold("a", "kept", 7, 600, quota=0)
    assert await store.held("a") == 1207
    await asyncio.sleep(1.1)
    assert await store.held("a") == 7  # 1200 ended: let go over a few calls
    await store.hold("a", "more", 93, 600, quota=100)


async def test_files_and_message_batches_free_their_bytes_when_deleted(store: BatchStore) -> None:
    data = b'{"custom_id":"a"}\n' * 10
    meta = await store.put_file("a", "in.jsonl", "batch", data, quota=len(data) + 5)
    with pytest.raises(BadRequest):
        await store.put_file("a", "in.jsonl", "batch", data, quota=len(data) + 5)
    assert [f.id for f in await store.files("a")] == [meta.id]  # the refused one: not kept
    assert await store.held("a") == len(data)
    assert await store.delete_file("a", meta.id)
    assert await store.held("a") == 0

    now = int(time.time())
    batch = BatchObject(
        id="msgbatch_q1",
        endpoint=MESSAGE_BATCHES,
        input_file_id="",
        status="in_progress",
        created_at=now,
        request_counts=RequestCounts(total=1),
    )
    await store.hold("a", batch.id, 321, store.batch_kept_s, quota=1000)
    await store.create("a", batch, ["r0"])
    assert await store.held("a") == 321
    await store.delete_batch("a", batch.id)
    assert await store.held("a") == 0


async def test_a_release_that_failed_is_made_good_by_the_retried_delete(store: BatchStore) -> None:
    """A DELETE whose release fails is a 503 and the file or batch stays, so the client's
    retry deletes it and frees its bytes; one whose release is all that went missing (the
    item gone, its bytes still counted) frees them on the retry's 404."""
    data = b'{"custom_id":"a"}\n' * 10
    meta = await store.put_file("a", "in.jsonl", "batch", data, quota=1000)
    batch = _message_batch("msgbatch_q2")
    await store.hold("a", batch.id, 321, store.batch_kept_s, quota=1000)
    await store.create("a", batch, ["r0"])
    release = store.release
    failing = 0

    async def fails_once(tenant: str, item_id: str) -> None:
        nonlocal failing
        failing += 1
        if failing % 2:
            raise StoreUnavailable("the batch store (Redis) is unavailable; try again")
        await release(tenant, item_id)

    store.release = fails_once  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await store.delete_file("a", meta.id)
    assert await store.file("a", meta.id) is not None  # still there to delete again
    assert await store.delete_file("a", meta.id)
    with pytest.raises(StoreUnavailable):
        await store.delete_batch("a", batch.id)
    assert await store.batch("a", batch.id) is not None
    await store.delete_batch("a", batch.id)
    store.release = release  # type: ignore[method-assign]
    assert await store.held("a") == 0

    await store.hold("a", "file-gone", 500, 600, quota=1000)  # counted, its file gone
    assert not await store.delete_file("a", "file-gone")  # the 404 a retry hears...
    assert await store.held("a") == 0  # ...lets its bytes go


async def test_an_upload_whose_hold_answer_was_lost_counts_nothing(store: BatchStore) -> None:
    """The hold ran in Redis, its answer never came (a socket timeout, a failover): the
    upload fails (503) and its bytes are let go, not kept counted for the retention."""
    hold = store._hold

    async def lost_answer(**kw: Any) -> Any:
        await hold(**kw)
        raise RedisConnectionError("Timeout reading from socket")

    store._hold = lost_answer  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable):
        await store.put_file("a", "in.jsonl", "batch", b"x" * 800, quota=1000)
    store._hold = hold
    assert await store.held("a") == 0 and await store.files("a") == []


@pytest.mark.parametrize("ends", ["last line", "window"])
async def test_a_message_batchs_bytes_count_as_long_as_it_is_kept(
    redis_url: str, ends: str
) -> None:
    """Its hold is taken for the longest a batch may run (window, grace, retention); once
    the batch ends (its last line, or its window expiring it) its keys stay the retention
    from then, and so do its bytes: none counted for a batch gone, which can't be deleted."""
    client = aioredis.Redis.from_url(redis_url)
    store = BatchStore(client, f"t{uuid.uuid4().hex[:8]}", retention_s=1)
    past = int(time.time()) - EXPIRY_GRACE_S - 1
    batch = _message_batch("msgbatch_q3", expires_at=past if ends == "window" else None)
    await store.hold("a", batch.id, 321, store.batch_kept_s, quota=1000)
    await store.create("a", batch, ["r0"])
    if ends == "window":
        ended = await store.batch("a", batch.id)
    else:
        assert await store.record(batch.id, 0, OutputLine(custom_id="r0"))
        ended = await store.batch("a", batch.id)
    assert ended is not None and ended.ended and await store.held("a") == 321
    await asyncio.sleep(1.2)
    assert await store.batch("a", batch.id) is None
    assert await store.held("a") == 0
    await client.aclose()


def _message_batch(batch_id: str, expires_at: int | None = None) -> BatchObject:
    now = int(time.time())
    return BatchObject(
        id=batch_id,
        endpoint=MESSAGE_BATCHES,
        input_file_id="",
        status="in_progress",
        created_at=now,
        expires_at=expires_at,
        request_counts=RequestCounts(total=1),
    )


# ---- through two real gateways ------------------------------------------------------------


@pytest.fixture(scope="module")
def quota_stack(stack_factory: Any, simulator: Simulator) -> Stack:
    cfg = example_config(simulator.url)
    cfg["tenants"]["acme"] = {"keys": [{"id": "k", "sha256": hash_key(ACME_KEY)}]}
    env = {"RELAY_BATCH_STORE_BYTES": "600", "RELAY_CONFIG_RELOAD_S": "0.2"}
    return stack_factory(cfg, gateways=2, extra_env=env)  # type: ignore[no-any-return]


def _openai(stack: Stack, key: str = DEMO_KEY, url: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url or stack.url}/v1", api_key=key, max_retries=0)


LINES = b"".join(
    b'{"custom_id":"%s","method":"POST","url":"/v1/chat/completions","body":' % name
    + b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
    for name in (b"a", b"b", b"c")
)


async def test_the_sdks_hear_a_400_past_the_quota_and_other_tenants_go_on(
    quota_stack: Stack,
) -> None:
    demo, acme = _openai(quota_stack), _openai(quota_stack, ACME_KEY, quota_stack.gateways[1])
    kept = await demo.files.create(file=("a.jsonl", LINES), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:  # (the other replica counts it)
        await _openai(quota_stack, url=quota_stack.gateways[1]).files.create(
            file=("b.jsonl", LINES), purpose="batch"
        )
    assert refused.value.status_code == 400 and "storage quota" in refused.value.message
    theirs = await acme.files.create(file=("c.jsonl", LINES), purpose="batch")
    batch = await acme.batches.create(
        input_file_id=theirs.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress"

    sdk = anthropic.AsyncAnthropic(base_url=quota_stack.url, api_key=DEMO_KEY, max_retries=0)
    params: Any = {
        "model": "claude-haiku",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi " * 50}],
    }
    with pytest.raises(anthropic.BadRequestError) as too_much:
        await sdk.messages.batches.create(requests=[{"custom_id": "r", "params": params}])
    assert "storage quota" in str(too_much.value)

    await demo.files.delete(kept.id)  # its bytes freed: the same upload is taken now
    await demo.files.create(file=("b.jsonl", LINES), purpose="batch")


async def test_a_key_removed_from_the_config_is_refused_by_every_gateway(
    quota_stack: Stack,
) -> None:
    path = WORKDIR / f"{quota_stack.prefix}.yaml"
    raw = yaml.safe_load(path.read_text())
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    async def statuses(key: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as http:
            return [
                (
                    await http.post(
                        f"{url}/v1/chat/completions",
                        json=chat,
                        headers={"authorization": f"Bearer {key}"},
                    )
                ).status_code
                for url in quota_stack.gateways
            ]

    assert await statuses(DEMO_KEY) == [200, 200]
    raw["tenants"]["demo"]["keys"] = [{"id": "rotated", "sha256": hash_key(NEW_KEY)}]
    path.write_text(yaml.safe_dump(raw))
    await asyncio.sleep(1.5)  # the look interval (0.2 s) and a load
    assert await statuses(DEMO_KEY) == [401, 401]
    assert await statuses(NEW_KEY) == [200, 200]
