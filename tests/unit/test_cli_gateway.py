"""`relay gateway` stops in bounded time: its open answers get RELAY_GATEWAY_DRAIN_S, then
are cut, so the app's shutdown (ledger lines sent or spilled, cancel notices) runs before
whoever stops it (`relay up`, Docker) kills it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from cli.supervisor import Supervisor
from schemas.config import load_config
from schemas.settings import Settings
from streams.stopping import STOP_GRACE_S

ROOT = Path(__file__).resolve().parents[2]


def test_the_gateway_drains_open_answers_for_a_bounded_time(monkeypatch) -> None:
    import uvicorn

    import cli.report
    import gateway.app
    import streams.logs

    async def reached(bootstrap: str) -> None: ...

    given: dict[str, object] = {}
    monkeypatch.setattr(cli.report, "reach", reached)
    monkeypatch.setattr(gateway.app, "create_app", lambda *args: "the app")
    monkeypatch.setattr(streams.logs, "quiet_repeats", lambda: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options))
    monkeypatch.setenv("RELAY_CONFIG", str(ROOT / "relay.example.yaml"))
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    monkeypatch.setenv("RELAY_GATEWAY_DRAIN_S", "7")
    result = CliRunner().invoke(app, ["gateway"])
    assert result.exit_code == 0, result.output
    assert given["timeout_graceful_shutdown"] == 7


def test_relay_up_waits_for_either_drain_and_the_shutdown_after_it() -> None:
    config = load_config(ROOT / "relay.example.yaml")
    for gateway_s, worker_s in ((60, 0.0), (0, 45.0), (20, 30.0)):
        settings = Settings(gateway_drain_s=gateway_s, worker_drain_s=worker_s)
        patience = Supervisor(settings, config).relay_patience()
        assert patience >= max(gateway_s, worker_s) + 2 * STOP_GRACE_S
    assert Supervisor(Settings(), config).relay_patience() == 40  # as compose gives them
