"""The gateway in-process, without Kafka: a bus that records what would be published and
answers from a script, so the unit tests can drive the real routes, edge and relay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.app import create_app
from gateway.bus import wire
from gateway.relay import Relay
from schemas.config import RelayConfig, load_config
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.settings import Settings
from schemas.usage import Usage
from streams.topics import Topics
from tables.cache import L1Cache, ResponseCache

EXAMPLE = Path(__file__).resolve().parents[2] / "relay.example.yaml"
DEMO_KEY = "rk-demo-relay-station-local"
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}

# (seconds to wait, reply) pairs a worker would send for an envelope
Script = Callable[[RequestEnvelope], list[tuple[float, ReplyEvent]]]


def hello(alias: str, finish: str = "stop") -> dict[str, Any]:
    """A chat completion saying Hello."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": alias,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": finish,
            }
        ],
    }


def answer_hello(env: RequestEnvelope) -> list[tuple[float, ReplyEvent]]:
    """A worker's plain answer: chunks then a final for a stream, else one final."""
    usage, cid = Usage(input_tokens=3, output_tokens=1), env.correlation_id
    if not env.stream:
        body = hello(env.alias)
        return [(0.0, ReplyEvent(correlation_id=cid, kind="final", body=body, usage=usage))]
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": env.alias}
    delta = {"role": "assistant", "content": "Hello"}
    chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]}
    return [
        (0.0, ReplyEvent(correlation_id=cid, kind="chunk", seq=1, body=chunk)),
        (0.0, ReplyEvent(correlation_id=cid, kind="final", seq=2, usage=usage, vendor="v")),
    ]


class FakeBus:
    """What the relay needs of ``gateway.bus.Bus``; publishing plays ``script``."""

    def __init__(self, script: Script = answer_hello) -> None:
        self.script = script
        self.topics = Topics("relay")
        self.reply_topic = "relay.replies.test"
        self.worker_check_s = 5.0
        self.published: list[RequestEnvelope] = []
        self._waiting: dict[str, asyncio.Queue[ReplyEvent]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def workers_missing_s(self) -> float:
        return 0.0

    async def look_for_workers(self, max_age_s: float = 0.1) -> None:
        return None

    def expect(self, correlation_id: str) -> asyncio.Queue[ReplyEvent]:
        queue: asyncio.Queue[ReplyEvent] = asyncio.Queue()
        self._waiting[correlation_id] = queue
        return queue

    def forget(self, correlation_id: str) -> bool:
        return self._waiting.pop(correlation_id, None) is not None

    async def publish(self, env: RequestEnvelope) -> None:
        wire(env)  # what the topic could not carry is refused as the real bus refuses it
        self.published.append(env)
        task = asyncio.create_task(self._play(env))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self, notice: RequestEnvelope) -> None:
        wire(notice)
        self.published.append(notice)  # a notice: no worker answers it

    async def _play(self, env: RequestEnvelope) -> None:
        for delay, event in self.script(env):
            await asyncio.sleep(delay)
            if queue := self._waiting.get(env.correlation_id):
                queue.put_nowait(event)

    async def meter(self, event: Any) -> None:
        return None

    async def meter_failure(self, env: RequestEnvelope, code: str) -> None:
        return None

    async def audit(self, kind: str, **fields: Any) -> None:
        return None


def gateway_app(
    script: Script = answer_hello, config: RelayConfig | None = None
) -> tuple[FastAPI, FakeBus]:
    """The real app (edge, routes, relay) on a ``FakeBus`` and an L1-only cache."""
    settings = Settings(config=EXAMPLE)
    config = config or load_config(EXAMPLE)
    app = create_app(settings, config, "unused:9092")
    bus = FakeBus(script)
    app.state.relay = Relay(settings, config, bus, ResponseCache(L1Cache(1000), None))  # type: ignore[arg-type]
    return app, bus


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://relay", headers=AUTH)
