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


def test_after_the_first_stop_signal_later_ones_are_ignored() -> None:
    """SIGINT and SIGHUP together (a terminal closing) must not cut the staged stop the
    first one began: the first interrupts, the rest are ignored from then on."""
    import signal

    import pytest

    from cli.supervisor import STOP_SIGNALS, _interrupt

    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _interrupt)
        with pytest.raises(KeyboardInterrupt):
            _interrupt(signal.SIGINT, None)
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in STOP_SIGNALS)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_reader_that_stops_reading_the_lines_does_not_stop_the_relay() -> None:
    """`relay up | head -1`: the pipe closes after the gateway line; the next lines go
    nowhere, and the process carries on."""
    import subprocess
    import sys

    script = (
        "import sys, time; from cli.supervisor import _say\n"
        "time.sleep(0.5)\n"
        "_say('gateway: x'); _say('relay key: y'); sys.stderr.write('still running')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the first line
    assert proc.stderr.read() == b"still running"
    assert proc.wait(30) == 0
