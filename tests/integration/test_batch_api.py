"""The relay's own Batch API driven by the official ``openai`` SDK: files, batches, output
files, the vendor batch API underneath, the ledger, validation, cancel and tenants."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from schemas.envelope import UsageEvent
from tests.support.stack import DEMO_KEY, SIM_KEY, Simulator, Stack

CHAT = "/v1/chat/completions"


def client(stack: Stack, key: str = DEMO_KEY, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=key, default_headers=headers, max_retries=0
    )


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def chat_line(custom_id: str, content: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


async def finished(sdk: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 60) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        batch = await sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


async def output(sdk: openai.AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    assert file_id is not None
    data = (await sdk.files.content(file_id)).content
    return {x["custom_id"]: x for x in map(orjson.loads, data.splitlines())}


async def direct(simulator: Simulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{simulator.url}/v1{path}", json=body, headers={"authorization": f"Bearer {SIM_KEY}"}
        )
    return r.json()  # type: ignore[no-any-return]


async def ledger_by_tag(
    stack: Stack, tag: str, count: int, timeout_s: float = 20
) -> list[UsageEvent]:
    consumer = AIOKafkaConsumer(
        f"{stack.prefix}.usage", bootstrap_servers=stack.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[UsageEvent] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and len(found) < count:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                events = [UsageEvent.model_validate_json(r.value or b"") for r in records]
                found += [e for e in events if e.cost_tag == tag]
    finally:
        await consumer.stop()
    return found


async def test_the_openai_sdk_runs_a_chat_batch_through_the_vendor_batch_api(
    relay: Stack, simulator: Simulator
) -> None:
    tag = uuid.uuid4().hex
    sdk = client(relay, **{"x-relay-cost-tag": tag})
    prompts = {f"q{i}": f"batch question {i} {uuid.uuid4().hex}" for i in range(3)}
    lines = [chat_line(cid, text) for cid, text in prompts.items()]
    vendor_batches = simulator.stats().get("batches", 0)

    upload = await sdk.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert (upload.purpose, upload.bytes) == ("batch", len(jsonl(lines)))
    created = await sdk.batches.create(
        input_file_id=upload.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert created.status == "in_progress" and created.request_counts.total == 3
    batch = await finished(sdk, created.id)

    assert batch.status == "completed", batch
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
    assert batch.metadata == {"job": "nightly"} and batch.error_file_id is None
    results = await output(sdk, batch.output_file_id)
    assert set(results) == set(prompts)
    for cid, text in prompts.items():
        response = results[cid]["response"]
        assert response["status_code"] == 200
        want = await direct(simulator, "/chat/completions", chat_line(cid, text)["body"])
        got = response["body"]["choices"][0]["message"]["content"]
        assert got == want["choices"][0]["message"]["content"]
        assert response["body"]["model"] == "gpt-4o-mini"
    assert simulator.stats().get("batches", 0) > vendor_batches, "sent as a vendor batch"

    events = await ledger_by_tag(relay, tag, 3)
    assert len(events) == 3 and all(e.batch_api and e.status == "ok" for e in events)
    assert all(e.priority == "background" and e.cost > 0 for e in events)
    listed = await sdk.batches.list(limit=100)
    assert created.id in [b.id for b in listed.data]

    files = {f.id: f for f in (await sdk.files.list()).data}
    assert files[batch.output_file_id].purpose == "batch_output" and upload.id in files
    outputs = [f.id for f in (await sdk.files.list(purpose="batch_output")).data]
    assert batch.output_file_id in outputs and upload.id not in outputs
    newest_first = [f.id for f in (await sdk.files.list()).data]
    assert [f.id for f in (await sdk.files.list(order="asc")).data] == newest_first[::-1]
    assert (await sdk.files.delete(batch.output_file_id)).deleted
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(batch.output_file_id)
    assert batch.output_file_id not in [f.id for f in (await sdk.files.list()).data]


async def test_an_embeddings_batch_answers_each_line(relay: Stack, simulator: Simulator) -> None:
    sdk = client(relay)
    texts = {f"e{i}": f"embed me {i} {uuid.uuid4().hex}" for i in range(2)}
    body = {"model": "text-embedding-3-small"}
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": {**body, "input": t}}
        for cid, t in texts.items()
    ]
    upload = await sdk.files.create(file=("emb.jsonl", jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = await finished(sdk, created.id)
    assert batch.status == "completed", batch
    results = await output(sdk, batch.output_file_id)
    for cid, text in texts.items():
        want = await direct(simulator, "/embeddings", {**body, "input": text})
        got = results[cid]["response"]["body"]["data"][0]["embedding"]
        assert got == pytest.approx(want["data"][0]["embedding"])


async def test_a_bad_input_file_fails_the_batch_with_every_problem_listed(relay: Stack) -> None:
    sdk = client(relay)
    lines = [
        chat_line("ok", "fine"),
        chat_line("nope", "which model?", model="no-such-model"),
        {**chat_line("wrong", "x"), "url": "/v1/embeddings"},
    ]
    data = jsonl(lines) + b"{oops\n"
    upload = await sdk.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = await sdk.batches.create(
        input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors is not None
    assert {(e.line, e.code) for e in batch.errors.data or []} == {
        (2, "model_not_found"),
        (3, "invalid_request"),
        (4, "invalid_request"),
    }
    assert batch.request_counts.total == 0 and batch.output_file_id is None


async def test_deleting_files_while_listing_them_visits_every_one(relay: Stack) -> None:
    """The usual clean-up: list, and delete each file as it comes.  The SDK asks each
    next page after the file it just deleted, which the relay still places."""
    sdk = client(relay)
    made = set()
    for n in range(3):
        upload = await sdk.files.create(
            file=(f"f{n}.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch"
        )
        made.add(upload.id)
    seen = set()
    async for listed in sdk.files.list(limit=1, purpose="batch"):
        if listed.id in made:  # (other tests' files are left as they are)
            seen.add(listed.id)
            await sdk.files.delete(listed.id)
    assert seen == made
    assert not made & {f.id for f in (await sdk.files.list()).data}


async def test_unknown_files_and_batches_are_openai_404s(relay: Stack) -> None:
    sdk = client(relay)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.batches.retrieve("batch_does_not_exist")
    assert missing.value.body["code"] == "not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await sdk.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        await sdk.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    upload = await sdk.files.create(file=("x.jsonl", jsonl([chat_line("a", "b")])), purpose="batch")
    before = [b.id for b in (await sdk.batches.list(limit=100)).data]
    with pytest.raises(openai.BadRequestError, match="x-relay"):
        await client(relay, **{"x-relay-priority": "someday"}).batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
        )
    assert [b.id for b in (await sdk.batches.list(limit=100)).data] == before, "none made"
    with pytest.raises(openai.BadRequestError):
        await sdk.batches.create(input_file_id="file-x", endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]


async def test_a_cancelled_batch_ends_cancelled_with_what_ran(relay: Stack) -> None:
    sdk = client(relay)
    lines = [chat_line(f"c{i}", f"cancel me {i} {uuid.uuid4().hex}") for i in range(2)]
    upload = await sdk.files.create(file=("c.jsonl", jsonl(lines)), purpose="batch")
    created = await sdk.batches.create(
        input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
    )
    cancelling = await sdk.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = await finished(sdk, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    counts = batch.request_counts
    assert counts.completed + counts.failed == counts.total == 2
    again = await sdk.batches.cancel(created.id)
    assert again.status == "cancelled", "cancelling a finished batch changes nothing"


async def test_cancelling_a_batch_the_vendor_runs_cancels_the_vendor_batch_too(
    relay: Stack, simulator: Simulator
) -> None:
    """Once its lines are in a vendor batch, cancelling the relay's batch cancels that
    vendor batch (what has not run is never paid for), the lines end batch_cancelled, and
    none is sent on the realtime way instead."""
    tag = uuid.uuid4().hex
    sdk = client(relay, **{"x-relay-cost-tag": tag})
    lines = [chat_line(f"v{i}", f"cancel at the vendor {i} {uuid.uuid4().hex}") for i in range(2)]
    before = simulator.stats()
    simulator.configure(batch_complete_after_s=120)  # the vendor is still at it when cancelled
    try:
        upload = await sdk.files.create(file=("v.jsonl", jsonl(lines)), purpose="batch")
        created = await sdk.batches.create(
            input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while simulator.stats()["batches"] == before["batches"]:
            assert loop.time() < deadline, "the lines never reached the vendor's batch API"
            await asyncio.sleep(0.2)
        await sdk.batches.cancel(created.id)
        batch = await finished(sdk, created.id)
    finally:
        simulator.configure(batch_complete_after_s=0.5)
    after = simulator.stats()
    assert after["batches_cancelled"] == before["batches_cancelled"] + 1
    assert batch.status == "cancelled" and batch.request_counts.failed == 2
    errors = await output(sdk, batch.error_file_id)
    assert {x["error"]["code"] for x in errors.values()} == {"batch_cancelled"}
    realtime = {k: n for k, n in after["by_endpoint"].items() if k != "batch"}
    assert realtime == {k: n for k, n in before["by_endpoint"].items() if k != "batch"}, (
        "no cancelled line went on the realtime way"
    )
    events = await ledger_by_tag(relay, tag, 2)
    assert {(e.status, e.error_code, e.cost) for e in events} == {("error", "batch_cancelled", 0)}


async def test_another_tenant_sees_none_of_it(stack_factory: Any, simulator: Simulator) -> None:
    from schemas.config import hash_key
    from tests.support.stack import example_config

    other_key = "rk-batch-api-other-tenant"
    cfg = example_config(simulator.url)
    cfg["tenants"]["other"] = {
        "keys": [{"id": "other-key", "sha256": hash_key(other_key)}],
        "models": ["*"],
    }
    stack = stack_factory(cfg)
    mine, theirs = client(stack), client(stack, key=other_key)
    upload = await mine.files.create(
        file=("in.jsonl", jsonl([chat_line("a", "hi")])), purpose="batch"
    )
    batch = await mine.batches.create(
        input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        await theirs.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await theirs.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    assert [f.id for f in (await theirs.files.list()).data] == []
    assert (await mine.files.retrieve(upload.id)).id == upload.id
    # Let it end here: its vendor batch must not land in another test's count.
    assert (await finished(mine, batch.id)).status == "completed"
