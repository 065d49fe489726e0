"""Each tenant may keep so many bytes in the Batch API's store (RELAY_BATCH_STORE_BYTES, or
its own ``batch_store_bytes``): past it an upload, or a message batch, is refused as
OpenAI refuses a full file storage (400 invalid_request_error), in the API's own error
shape, and other tenants carry on.  The routes on a store kept in memory here; the
counting itself, in Redis, is tests/integration/test_batch_quota.py's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from schemas.batches import BatchObject, FileObject, new_id
from schemas.config import RelayConfig, hash_key, load_config
from schemas.envelope import RequestEnvelope
from schemas.errors import StoreUnavailable
from tables.batches import over_quota
from tests.support.gateway import EXAMPLE, FakeBus, client, gateway_app

ACME_KEY = "rk-acme-0123456789abcdef0123456789"
ACME = {"authorization": f"Bearer {ACME_KEY}"}
LINE = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}}\n'
PARAMS = {"model": "claude-haiku", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


class MemoryStore:
    """The part of ``BatchStore`` these routes use, in memory, holds counted as the
    store's script counts them."""

    batch_kept_s = 3600

    def __init__(self) -> None:
        self.holds: dict[str, dict[str, int]] = {}
        self.files: dict[str, tuple[str, FileObject, bytes]] = {}
        self.batches: dict[str, tuple[str, BatchObject]] = {}
        self.quotas: list[int] = []  # the quota each hold was asked under
        self.fail_create = False
        self.lose_hold_answer = False  # the hold counted, its answer lost on the way back

    def held(self, tenant: str) -> int:
        return sum(self.holds.get(tenant, {}).values())

    async def hold(self, tenant: str, item_id: str, size: int, kept_s: int, quota: int) -> None:
        self.quotas.append(quota)
        mine = self.holds.setdefault(tenant, {})
        if quota and self.held(tenant) - mine.get(item_id, 0) + size > quota:
            raise over_quota(quota, self.held(tenant), size)
        mine[item_id] = size
        if self.lose_hold_answer:
            raise StoreUnavailable("the batch store (Redis) is unavailable; try again")

    async def release(self, tenant: str, item_id: str) -> None:
        self.holds.get(tenant, {}).pop(item_id, None)

    async def put_file(
        self, tenant: str, filename: str, purpose: str, data: bytes, quota: int = 0
    ) -> FileObject:
        meta = FileObject(id=new_id("file-"), bytes=len(data), filename=filename, purpose=purpose)
        await self.hold(tenant, meta.id, len(data), 60, quota)
        self.files[meta.id] = (tenant, meta, data)
        return meta

    async def file(self, tenant: str, file_id: str) -> FileObject | None:
        found = self.files.get(file_id)
        return found[1] if found and found[0] == tenant else None

    async def content(self, tenant: str, file_id: str) -> bytes | None:
        found = self.files.get(file_id)
        return found[2] if found and found[0] == tenant else None

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        if await self.file(tenant, file_id) is None:
            return False
        del self.files[file_id]
        await self.release(tenant, file_id)
        return True

    async def create(self, tenant: str, batch: BatchObject, custom_ids: list[str]) -> None:
        if self.fail_create:
            raise StoreUnavailable("the batch store (Redis) is unavailable; try again")
        self.batches[batch.id] = (tenant, batch)

    async def record_many(self, batch_id: str, lines: dict[int, Any]) -> bool:
        return bool(lines)

    async def batch(self, tenant: str, batch_id: str) -> BatchObject | None:
        found = self.batches.get(batch_id)
        return found[1] if found and found[0] == tenant else None

    async def outcomes(self, batch_id: str) -> dict[str, int]:
        return {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}


class Bus(FakeBus):
    async def publish_all(self, envs: list[RequestEnvelope]) -> list[Exception | None]:
        self.published.extend(envs)
        return [None] * len(envs)


def gateway(quota: int, **acme: Any) -> tuple[Any, Bus, MemoryStore]:
    """The real app (its requests as demo unless said) with tenants demo and acme
    (``acme``: more of its config) on a store in memory, under a quota of ``quota`` bytes
    per tenant."""
    raw = load_config(EXAMPLE).model_dump()
    raw["tenants"]["acme"] = {"keys": [{"id": "k", "sha256": hash_key(ACME_KEY)}], **acme}
    app, _ = gateway_app(config=RelayConfig.model_validate(raw))
    bus = app.state.relay.bus = Bus()
    app.state.relay.settings.batch_store_bytes = quota
    app.state.batches = store = MemoryStore()
    return app, bus, store


async def upload(http: httpx.AsyncClient, data: bytes, **headers: str) -> httpx.Response:
    files = {"file": ("in.jsonl", data, "application/jsonl")}
    return await http.post("/v1/files", data={"purpose": "batch"}, files=files, headers=headers)


async def test_an_upload_past_the_quota_is_refused_as_openai_refuses_a_full_storage() -> None:
    app, _, store = gateway(quota=3 * len(LINE))
    async with client(app) as http:
        first = await upload(http, LINE * 2)
        assert first.status_code == 200, first.json()
        refused = await upload(http, LINE * 2)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "exceeded your storage quota" in error["message"]
        assert f"keeps {2 * len(LINE)}" in error["message"]
        assert store.held("demo") == 2 * len(LINE)  # the refused one counts nothing
        # Deleting frees its bytes: the same upload is taken now.
        gone = await http.delete(f"/v1/files/{first.json()['id']}")
        assert gone.status_code == 200 and store.held("demo") == 0
        assert (await upload(http, LINE * 2)).status_code == 200


async def test_a_tenant_past_its_quota_leaves_the_others_working() -> None:
    app, bus, _ = gateway(quota=2 * len(LINE))
    async with client(app) as http:
        assert (await upload(http, LINE * 2)).status_code == 200
        assert (await upload(http, LINE)).status_code == 400  # demo is full
        theirs = await upload(http, LINE, **ACME)
        assert theirs.status_code == 200
        asked = {
            "input_file_id": theirs.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        batch = await http.post("/v1/batches", json=asked, headers=ACME)
        assert batch.status_code == 200 and batch.json()["status"] == "in_progress"
        made = await http.post("/v1/messages/batches", json=_batch_of(1), headers=ACME)
        assert made.status_code == 200, made.json()
    assert len(bus.published) == 2  # acme's line and its message batch's request


def _batch_of(n: int) -> dict[str, Any]:
    return {"requests": [{"custom_id": f"r{i}", "params": PARAMS} for i in range(n)]}


async def test_a_message_batch_past_the_quota_is_refused_in_anthropics_shape() -> None:
    app, bus, store = gateway(quota=500)
    headers = {"anthropic-version": "2023-06-01"}
    async with client(app) as http:
        small = await http.post("/v1/messages/batches", json=_batch_of(1), headers=headers)
        assert small.status_code == 200, small.json()
        held = store.held("demo")
        assert 0 < held < 500  # its requests, as sent
        large = await http.post("/v1/messages/batches", json=_batch_of(10), headers=headers)
    assert large.status_code == 400
    body = large.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "exceeded your storage quota" in body["error"]["message"]
    assert len(bus.published) == 1 and store.held("demo") == held  # the large one: nothing
    assert len(store.batches) == 1


async def test_a_message_batch_that_could_not_be_stored_holds_nothing() -> None:
    app, bus, store = gateway(quota=10_000)
    store.fail_create = True
    async with client(app) as http:
        failed = await http.post("/v1/messages/batches", json=_batch_of(2))
    assert failed.status_code in (503, 529) and store.held("demo") == 0
    assert not bus.published


async def test_a_message_batch_whose_hold_answer_was_lost_holds_nothing() -> None:
    app, bus, store = gateway(quota=10_000)
    store.lose_hold_answer = True
    async with client(app) as http:
        failed = await http.post("/v1/messages/batches", json=_batch_of(2))
    assert failed.status_code in (503, 529) and store.held("demo") == 0
    assert not bus.published


async def test_deleting_a_message_batch_gone_lets_go_of_what_it_still_held() -> None:
    """A retried DELETE whose batch went while its bytes kept counting hears a 404, and
    the bytes are let go; another tenant's are not touched."""
    app, _, store = gateway(quota=10_000)
    store.holds = {"demo": {"msgbatch_gone": 300}, "acme": {"msgbatch_gone": 200}}
    async with client(app) as http:
        gone = await http.delete("/v1/messages/batches/msgbatch_gone")
    assert gone.status_code == 404
    assert (store.held("demo"), store.held("acme")) == (0, 200)


@pytest.mark.parametrize(("own", "asked"), [(None, 123), (0, 0), (50_000, 50_000)])
async def test_a_tenants_own_quota_overrides_the_setting(own: int | None, asked: int) -> None:
    """``batch_store_bytes`` of a tenant (0: no limit) in place of RELAY_BATCH_STORE_BYTES."""
    app, _, store = gateway(quota=123, **({} if own is None else {"batch_store_bytes": own}))
    async with client(app) as http:
        await upload(http, LINE, **ACME)
        await http.post("/v1/messages/batches", json=_batch_of(1), headers=ACME)
    assert store.quotas == [asked, asked]
