"""Vendor batches that run only once they end: a cancel stops requests that had not run,
and leaves nothing behind once the relay cleans up; a batch whose window closed first ends
expired, the requests it never ran said to be so; Anthropic's request ids are strings."""

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


def _chat_line(custom_id: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": user(custom_id)}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def _openai_batch(sim: httpx.AsyncClient, lines: list[dict[str, Any]]) -> str:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    upload = await sim.post(
        "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}
    )
    asked = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions"}
    made = await sim.post("/v1/batches", json=asked)
    batch_id: str = made.json()["id"]
    return batch_id


async def _lines(sim: httpx.AsyncClient, file_id: str) -> list[dict[str, Any]]:
    content = (await sim.get(f"/v1/files/{file_id}/content")).text
    return [json.loads(line) for line in content.splitlines()]


async def test_an_openai_batch_whose_window_closed_ends_expired(sim: httpx.AsyncClient) -> None:
    """What ran is in the output file; the rest is in the error file as batch_expired,
    with no response (never run, never billed), and counted as failed."""
    batch_id = await _openai_batch(sim, [_chat_line(f"r{i}", "gpt-4o-mini") for i in range(3)])
    await sim.post("/sim/config", json={"batch_complete_after_s": 0, "batch_expire_after": 1})
    batch = (await sim.get(f"/v1/batches/{batch_id}")).json()
    assert batch["status"] == "expired" and batch["expired_at"] and not batch["completed_at"]
    assert batch["expires_at"] == batch["expired_at"]
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    [answered] = await _lines(sim, batch["output_file_id"])
    assert answered["custom_id"] == "r0" and answered["response"]["status_code"] == 200
    late = await _lines(sim, batch["error_file_id"])
    assert [line["custom_id"] for line in late] == ["r1", "r2"]
    assert all(line["response"] is None for line in late)
    assert {line["error"]["code"] for line in late} == {"batch_expired"}
    assert (await sim.get("/stats")).json()["calls"] == {"gpt-4o-mini": 1}, "r0 alone ran"


@pytest.mark.parametrize("kind", ["openai", "azure", "anthropic"])
async def test_an_expired_batch_s_unrun_requests_may_go_another_way(
    sim: httpx.AsyncClient, kind: str
) -> None:
    """A model name with -expire: its requests are never run.  The relay's adapter reads
    each as not run (retryable, another route may answer it), and the others' answers."""
    from agents.adapters import VendorCall, VendorResult, make_adapter
    from schemas.config import VendorConfig
    from schemas.errors import RelayError

    base = "http://sim/v1" if kind == "openai" else "http://sim"
    adapter: Any = make_adapter(VendorConfig(kind=kind, base_url=base), sim)  # type: ignore[arg-type]
    calls = [
        (f"r{i}", VendorCall(model, {"messages": user(f"q{i}"), "max_tokens": 20}, "x"))
        for i, model in enumerate(["m", "m-expire", "m-expire"])
    ]
    batch_id = await adapter.submit_batch(calls, "x")
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    results = await adapter.poll_batch(batch_id, "x")
    assert results is not None and isinstance(results["r0"], VendorResult)
    for custom_id in ("r1", "r2"):
        unrun = results[custom_id]
        assert isinstance(unrun, RelayError) and unrun.retryable
        assert "expired" in unrun.message
    assert (await sim.get("/stats")).json()["calls"] == {"m": 1}
    if kind == "anthropic":
        got = (await sim.get(f"/v1/messages/batches/{batch_id}", headers=AV)).json()
        assert got["processing_status"] == "ended"
        assert got["request_counts"] == {
            "processing": 0,
            "succeeded": 1,
            "errored": 0,
            "canceled": 0,
            "expired": 2,
        }
        assert got["expires_at"] == got["ended_at"]
        results_url = f"/v1/messages/batches/{batch_id}/results"
        kinds = [
            json.loads(x)["result"]["type"]
            for x in (await sim.get(results_url, headers=AV)).text.splitlines()
        ]
        assert kinds == ["succeeded", "expired", "expired"]
    else:
        path = "/v1/batches/" if kind == "openai" else "/openai/batches/"
        params = {} if kind == "openai" else {"api-version": "2024-10-21"}
        got = (await sim.get(path + batch_id, params=params)).json()
        assert got["status"] == "expired"


async def test_an_openai_batch_with_nothing_run_has_no_output_file(sim: httpx.AsyncClient) -> None:
    batch_id = await _openai_batch(sim, [_chat_line("a", "gpt-4o-mini-expire")])
    await sim.post("/sim/config", json={"batch_complete_after_s": 0})
    batch = (await sim.get(f"/v1/batches/{batch_id}")).json()
    assert batch["status"] == "expired" and batch["output_file_id"] is None
    assert batch["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert (await sim.get("/stats")).json()["total"] == 0


async def test_a_batch_within_its_window_still_completes(sim: httpx.AsyncClient) -> None:
    """batch_expire_after past the batch's size: every request ran, nothing expired."""
    batch_id = await _openai_batch(sim, [_chat_line("a", "gpt-4o-mini")])
    await sim.post("/sim/config", json={"batch_complete_after_s": 0, "batch_expire_after": 5})
    batch = (await sim.get(f"/v1/batches/{batch_id}")).json()
    assert batch["status"] == "completed" and batch["expired_at"] is None
