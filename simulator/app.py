"""The simulator app factory: vendor routers plus live control (/sim/config) and /stats."""

from __future__ import annotations

import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from simulator import anthropic_routes, batch_routes, ollama_routes, openai_routes
from simulator.faults import Sim, SimConfig, bearer, json_response, read_json

MODELS = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("text-embedding-3-small", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("llama3.2", "ollama"),
)
_CREATED = 1_735_689_600  # 2025-01-01, a fixed "created" stamp for the model list


def _control_routes(app: FastAPI) -> None:
    @app.get("/sim/config")
    async def get_config(request: Request) -> Response:
        """The live config (the key it demands stays unsaid: it stands for a vendor's)."""
        return json_response(request.app.state.sim.config.model_dump(exclude={"api_key"}))

    @app.post("/sim/config")
    async def set_config(request: Request) -> Response:
        """Merge a partial SimConfig into the live one (tests inject faults this way)."""
        patch = await read_json(request)
        if patch is None:
            return json_response({"error": "body must be a JSON object"}, 400)
        try:
            config = request.app.state.sim.update(patch)
        except ValidationError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(config.model_dump(exclude={"api_key"}))

    @app.get("/stats")
    async def stats(request: Request) -> Response:
        """Vendor call counts by model and endpoint, faults, input items and batches."""
        return json_response(request.app.state.sim.stats.snapshot())

    @app.post("/stats/reset")
    async def reset_stats(request: Request) -> Response:
        """Zero the counters."""
        sim: Sim = request.app.state.sim
        sim.stats.reset()
        return json_response(sim.stats.snapshot())

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        """Model list in OpenAI's shape, or Anthropic's when ``anthropic-version`` is sent."""
        sim: Sim = request.app.state.sim
        if request.headers.get("anthropic-version"):
            if not sim.authorized(request.headers.get("x-api-key")):
                return anthropic_routes.error(401, "invalid x-api-key")
            data: list[dict[str, Any]] = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m, owner in MODELS
                if owner == "anthropic"
            ]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"]}
            return json_response(page | {"last_id": data[-1]["id"]})
        if not sim.authorized(bearer(request)):
            return openai_routes.error(401, "Incorrect API key provided.", code="invalid_api_key")
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": owner}
            for m, owner in MODELS
        ]
        return json_response({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> Response:
        """Liveness probe."""
        return json_response({"ok": True, "time": time.time()})


def create_app(config: SimConfig | None = None) -> FastAPI:
    """Build a fresh simulator; each app has its own config, stats, cache memory and batches."""
    app = FastAPI(
        title="Relay Station vendor simulator", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.sim = Sim(config or SimConfig())
    _control_routes(app)
    # Batch routes first: /v1/messages/batches must not be shadowed by anything broader.
    for module in (batch_routes, openai_routes, anthropic_routes, ollama_routes):
        app.include_router(module.router)
    return app


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator under uvicorn until interrupted."""
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)
