"""Fixtures the simulator's unit tests share: the simulator app in-process, and an httpx
client on it (a module overrides ``app`` for a config of its own)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from simulator import SimConfig, create_app


@pytest.fixture
def app() -> Any:
    """The simulator with its defaults."""
    return create_app(SimConfig())


@pytest.fixture
def sim(app: Any) -> httpx.AsyncClient:
    """A client of ``app``, over ASGI: no port, no server."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
