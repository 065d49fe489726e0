"""The gateway's request metrics are labelled by route, never by raw path."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY

from gateway.metrics import Measure


def count(endpoint: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "relay_requests_total", {"endpoint": endpoint, "status": status}
    )
    return value or 0.0


async def test_ids_and_unknown_paths_do_not_become_labels() -> None:
    app = FastAPI()

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> dict[str, str]:
        return {"id": file_id}

    app.add_middleware(Measure, known={"/v1/chat/completions"})
    before = {
        "file": count("/v1/files/{file_id}", "200"),
        "unmatched": count("unmatched", "404"),
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
        for file_id in ("file-a", "file-b", "file-c"):
            assert (await http.get(f"/v1/files/{file_id}")).status_code == 200
        assert (await http.get("/v1/wp-login.php")).status_code == 404
        assert (await http.get("/v1/chat/completions")).status_code == 404

    assert count("/v1/files/{file_id}", "200") - before["file"] == 3
    assert count("unmatched", "404") - before["unmatched"] == 1
    assert count("/v1/chat/completions", "404") >= 1  # a known path keeps its name
    assert count("/v1/files/file-a", "200") == 0
    assert count("/v1/wp-login.php", "404") == 0


def errors(code: str, status: str) -> float:
    value = REGISTRY.get_sample_value("relay_errors_total", {"code": code, "status": status})
    return value or 0.0


async def test_errors_are_counted_on_v1_only_and_inside_streams_too() -> None:
    """A scanner's 404s off /v1 are no requests (relay_requests_total counts /v1 only), so
    counting them as errors made an error ratio of nothing; an error event that ends a
    started stream is an error the client got, though its status was 200."""
    from schemas.envelope import ReplyEvent
    from schemas.errors import VendorUnavailable
    from tests.support.gateway import AUTH, answer_hello, client, gateway_app

    def breaks(env):  # type: ignore[no-untyped-def]
        first = answer_hello(env)[0]
        err = VendorUnavailable("the vendor's stream broke").to_dict()
        return [
            first,
            (0.0, ReplyEvent(correlation_id=env.correlation_id, kind="error", error=err)),
        ]

    app, _ = gateway_app(breaks)
    before = errors("not_found", "404"), errors("vendor_unavailable", "502")
    async with client(app) as http:
        assert (await http.get("/wp-login.php")).status_code == 404
        assert (await http.get("/v1/no-such-thing")).status_code == 404
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        streamed = await http.post("/v1/chat/completions", json=body, headers=AUTH)
        assert streamed.status_code == 200 and "the vendor's stream broke" in streamed.text
    assert errors("not_found", "404") - before[0] == 1
    assert errors("vendor_unavailable", "502") - before[1] == 1


def test_a_breaker_past_its_open_period_shows_half_open_not_open() -> None:
    """The table says open until a call's outcome is folded, which an idle model may never
    have; past open_s the next call is a probe, and the gauge says so (no alert for good)."""
    import time

    from streams.metrics import WorkerState

    now = time.time()
    health = {
        "v/just-opened": {"state": "open", "opened_at": now - 1},
        "v/long-ago": {"state": "open", "opened_at": now - 60},
        "v/fine": {"state": "closed"},
    }
    [*_, breakers] = WorkerState(lambda: 0, lambda: 0, lambda: health, open_s=10).collect()
    states = {s.labels["model"]: s.value for s in breakers.samples}
    assert states == {"just-opened": 2, "long-ago": 1, "fine": 0}
