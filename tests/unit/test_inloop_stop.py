"""A worker's stop: what decides whether its consumer commits the offsets taken last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.config import RelayConfig
from schemas.settings import Settings
from streams import fetch_guard, topic_guard
from streams.inloop import RelayApp
from streams.wiring import KafkaSink, build_worker


def worker(tmp_path: Path) -> RelayApp:
    example = Path(__file__).resolve().parents[2] / "relay.example.yaml"
    cfg = yaml.safe_load(example.read_text())
    cfg.pop("simulator", None)
    try:
        app = build_worker(Settings(data_dir=tmp_path), RelayConfig.model_validate(cfg), "x:9")
    finally:  # (process-wide guards the worker installs)
        fetch_guard.uninstall()
        topic_guard.uninstall()
    assert isinstance(app, RelayApp)
    return app


async def test_replies_lost_at_stop_leave_the_last_commit_to_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies the broker never took by the stop are lost (and said so), but their
    requests' offsets went with Faust's commits as the requests were taken: skipping the
    last commit would not take them again, only the requests answered in the second
    before the stop, each paid for (and metered) a second time."""

    async def lost(self: Any) -> bool:
        return False  # replies held at stop: dropped

    monkeypatch.setattr(KafkaSink, "close", lost)
    app = worker(tmp_path)
    await app.on_before_shutdown.send()
    assert app.undelivered is False
