"""`relay up`'s supervisor: where it looks for the gateway, and what it notices stopping."""

from __future__ import annotations

import socket
from pathlib import Path

from cli.supervisor import Supervisor, _answers, _connectable
from schemas.config import load_config
from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_a_wildcard_or_ipv6_host_is_reached_on_a_url_that_works():
    assert _connectable("0.0.0.0") == "127.0.0.1"
    assert _connectable("::") == "[::1]"
    assert _connectable("::1") == "[::1]"
    assert _connectable("127.0.0.1") == "127.0.0.1"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _answers(f"{_connectable('0.0.0.0')}:{port}")


def supervisor(tmp_path: Path) -> Supervisor:
    settings = Settings(data_dir=tmp_path)
    return Supervisor(settings, load_config(ROOT / "relay.example.yaml"))


def test_a_reused_broker_that_stops_is_noticed(tmp_path: Path):
    sup = supervisor(tmp_path)
    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        sup.reused_broker = f"127.0.0.1:{broker.getsockname()[1]}"
        assert sup._stopped() is None
    assert "`relay broker`) stopped" in (sup._stopped() or "")


def test_a_child_that_dies_is_named_with_its_code_and_only_this_runs_output(tmp_path: Path):
    sup = supervisor(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "worker.log").write_text("an earlier run's error\n")
    sup.env["PYTHONPATH"] = str(ROOT)
    proc = sup.spawn("worker", "--no-such-option")
    proc.wait(30)
    stopped = sup._stopped() or ""
    assert f"worker stopped on its own ({proc.returncode})" in stopped
    assert str(tmp_path / "logs" / "worker.log") in stopped
    tail = sup._tail("worker")
    assert "No such option" in tail and "earlier run" not in tail
