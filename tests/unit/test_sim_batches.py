"""Vendor batches that run only once they end: a cancel stops requests that had not run,
and leaves nothing behind once the relay cleans up; Anthropic's request ids are strings."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from simulator import SimConfig, create_app

AV = {"anthropic-version": "2023-06-01"}


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def app() -> Any:
    return create_app(SimConfig(batch_complete_after_s=60))


@pytest.mark.parametrize("custom_id", [None, 5, True])
async def test_a_message_batch_request_id_must_be_a_string(
    sim: httpx.AsyncClient, custom_id: Any
) -> None:
    params = {"model": "c", "max_tokens": 5, "messages": user("a")}
    body = {"requests": [{"custom_id": custom_id, "params": params}]}
    r = await sim.post("/v1/messages/batches", headers=AV, json=body)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "custom_id" in r.json()["error"]["message"]
    assert (await sim.get("/stats")).json()["batches"] == 0


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
async def test_a_batch_cancelled_at_once_runs_nothing_and_cleans_up(
    app: Any, sim: httpx.AsyncClient, kind: str
) -> None:
    """Cancelled before it ended, no request ran (no call counted); the relay's cleanup
    then leaves no file behind (OpenAI's error file lists every request
    ``batch_cancelled``), and a message batch ends every request canceled."""
    from agents.adapters import VendorCall, make_adapter
    from schemas.config import VendorConfig

    base = "http://sim/v1" if kind == "openai" else "http://sim"
    adapter: Any = make_adapter(VendorConfig(kind=kind, base_url=base), sim)  # type: ignore[arg-type]
    calls = [
        (f"r{i}", VendorCall("m", {"messages": user(f"q{i}"), "max_tokens": 20}, "x"))
        for i in range(3)
    ]
    batch_id = await adapter.submit_batch(calls, "x")
    await adapter.cancel_batch(batch_id, "x")
    results = await adapter.poll_batch(batch_id, "x")
    assert results is not None and set(results) == {"r0", "r1", "r2"}
    assert all(isinstance(r, Exception) for r in results.values())
    stats = (await sim.get("/stats")).json()
    assert (stats["calls"], stats["total"], stats["batches_cancelled"]) == ({}, 0, 1)
    await adapter.clean_batch(batch_id, "x")
    if kind == "anthropic":
        assert batch_id not in app.state.sim.batches
    else:  # the input file and the error file: there never was an output file
        assert (await sim.get("/stats")).json()["files_deleted"] == 2
        assert not app.state.sim.files and not app.state.sim.file_data


async def test_a_batch_runs_its_requests_when_first_seen_ended(sim: httpx.AsyncClient) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": user("a")},
    }
    upload = await sim.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(line).encode())},
        data={"purpose": "batch"},
    )
    created = await sim.post(
        "/v1/batches",
        json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions"},
    )
    params = {"model": "c", "max_tokens": 5, "messages": user("a")}
    message_batch = await sim.post(
        "/v1/messages/batches",
        headers=AV,
        json={"requests": [{"custom_id": "a", "params": params}]},
    )
    batch_id, message_batch_id = created.json()["id"], message_batch.json()["id"]
    assert (await sim.get(f"/v1/batches/{batch_id}")).json()["status"] == "in_progress"
    assert (await sim.get("/stats")).json()["total"] == 0, "nothing ran yet"
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    done = (await sim.get(f"/v1/batches/{batch_id}")).json()
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 1
    ended = (await sim.get(f"/v1/messages/batches/{message_batch_id}", headers=AV)).json()
    assert ended["request_counts"]["succeeded"] == 1
    for _ in range(2):  # polled again: run once, not again
        await sim.get(f"/v1/batches/{batch_id}")
        await sim.get(f"/v1/messages/batches/{message_batch_id}/results", headers=AV)
    assert (await sim.get("/stats")).json()["calls"] == {"gpt-4o-mini": 1, "c": 1}


async def _batch(sim: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    upload = await sim.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(line).encode())},
        data={"purpose": "batch"},
    )
    asked = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions"}
    return await sim.post("/v1/batches", json={**asked, **extra})


async def test_batches_are_listed_newest_first_with_their_metadata(sim: httpx.AsyncClient) -> None:
    """As OpenAI lists them (what the relay looks through for a batch whose create call
    failed): newest first, paged with ``after`` and ``limit``; message batches are not
    OpenAI's."""
    made = [(await _batch(sim, metadata={"n": str(i)})).json()["id"] for i in range(3)]
    params = {"model": "c", "max_tokens": 5, "messages": user("a")}
    body = {"requests": [{"custom_id": "a", "params": params}]}
    await sim.post("/v1/messages/batches", headers=AV, json=body)
    first = (await sim.get("/v1/batches", params={"limit": 2})).json()
    assert [b["id"] for b in first["data"]] == [made[2], made[1]] and first["has_more"]
    assert [b["metadata"] for b in first["data"]] == [{"n": "2"}, {"n": "1"}]
    assert first["last_id"] == made[1]
    rest = (await sim.get("/v1/batches", params={"after": made[1], "limit": 2})).json()
    assert [b["id"] for b in rest["data"]] == [made[0]] and not rest["has_more"]
    azure = await sim.get("/openai/batches", params={"api-version": "2024-10-21"})
    assert azure.json()["data"][0]["id"] == made[2]


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(17)}, {"k": 1}, {"k" * 65: "v"}, {"k": "v" * 513}, ["k"]],
)
async def test_batch_metadata_past_openai_s_limits_is_refused(
    sim: httpx.AsyncClient, metadata: Any
) -> None:
    refused = await _batch(sim, metadata=metadata)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "metadata"
    assert (await sim.get("/stats")).json()["batches"] == 0


class LosesTheCreateAnswer(httpx.AsyncBaseTransport):
    """The simulator behind a link that drops the answer to each batch create call (the
    batch is made all the same)."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/batches"):
            await resp.aclose()
            raise httpx.ReadTimeout("timed out", request=request)
        return resp


@pytest.mark.parametrize("kind", ["openai", "azure"])
async def test_a_batch_whose_create_answer_was_lost_is_found_by_its_nonce(
    app: Any, sim: httpx.AsyncClient, kind: str
) -> None:
    """The vendor made the batch; the relay never heard so: it finds it among the
    account's batches and follows it, and the vendor holds one batch, not two."""
    from agents.adapters import VendorCall, make_adapter
    from schemas.config import VendorConfig

    await _batch(sim)  # another one, made before
    base = "http://sim/v1" if kind == "openai" else "http://sim"
    client = httpx.AsyncClient(transport=LosesTheCreateAnswer(app), base_url="http://sim")
    adapter: Any = make_adapter(VendorConfig(kind=kind, base_url=base), client)  # type: ignore[arg-type]
    adapter.lookup_waits_s = (0.0,)
    calls = [("r0", VendorCall("m", {"messages": user("q"), "max_tokens": 20}, "x"))]
    batch_id = await adapter.submit_batch(calls, "x")
    assert (await sim.get("/stats")).json()["batches"] == 2
    newest = list(app.state.sim.batches)[-1]
    assert batch_id == newest
    assert app.state.sim.batches[newest]["obj"]["metadata"]["relay_lane_nonce"]
