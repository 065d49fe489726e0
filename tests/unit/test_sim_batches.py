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
