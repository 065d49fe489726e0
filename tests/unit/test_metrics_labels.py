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
