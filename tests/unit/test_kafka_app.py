"""The worker's Faust app: what it asks of the broker."""

from __future__ import annotations

from pathlib import Path

from schemas.settings import Settings
from streams.app import make_app


def test_the_worker_producer_waits_for_every_in_sync_replica(tmp_path: Path) -> None:
    """It writes the spend and health changelogs: acks=1 lost a write whose leader died
    before its followers copied it, on any cluster with replicas."""
    app = make_app(Settings(data_dir=tmp_path), "127.0.0.1:9")
    assert app.conf.producer_acks == -1
