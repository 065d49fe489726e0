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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_free_ports(tmp_path: Path, **settings: object) -> Supervisor:
    """A supervisor whose gateway and simulator ports are free (the example's 8000 and
    9100 may be another run's)."""
    config = load_config(ROOT / "relay.example.yaml")
    assert config.simulator is not None
    config.simulator.port = free_port()
    given: dict = {"data_dir": tmp_path, "port": free_port(), **settings}
    return Supervisor(Settings(**given), config)


def test_the_curl_line_names_a_chat_model_the_demo_keys_tenant_may_use() -> None:
    from cli.supervisor import demo_request

    config = load_config(ROOT / "relay.example.yaml")
    chat = [a for a, m in config.models.items() if m.kind == "chat"]
    assert len(chat) > 1
    demo = Settings().demo_key
    assert demo_request(config, demo) == (demo, chat[0], "")
    config.tenants["demo"].models = [chat[1]]
    assert demo_request(config, demo) == (demo, chat[1], "")
    embeddings = [a for a, m in config.models.items() if m.kind != "chat"]
    config.tenants["demo"].models = embeddings
    _, alias, why = demo_request(config, demo)
    assert alias is None and "tenant demo" in why and "tenants.demo.models" in why


def test_without_any_chat_model_there_is_no_curl_line_and_it_says_why() -> None:
    from cli.supervisor import demo_request

    config = load_config(ROOT / "relay.example.yaml")
    config.models = {a: m for a, m in config.models.items() if m.kind != "chat"}
    assert config.models
    assert demo_request(config, Settings().demo_key)[1:] == (
        None,
        "the config has no chat model (kind: chat)",
    )


def test_a_key_of_your_own_gets_a_chat_model_some_tenant_may_use() -> None:
    from cli.supervisor import demo_request

    config = load_config(ROOT / "relay.example.yaml")
    key, alias, _ = demo_request(config, "rk-not-in-this-config")
    assert key == "<one of your relay keys>" and alias is not None
    assert config.models[alias].kind == "chat"


def test_a_worker_metrics_port_in_use_is_refused_before_anything_starts(tmp_path: Path):
    import pytest

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sup = on_free_ports(tmp_path, worker_metrics_port=port)
        with pytest.raises(SystemExit, match="RELAY_WORKER_METRICS_PORT"):
            sup.preflight()
    assert not sup.children


def test_ports_given_twice_are_refused_before_anything_starts(tmp_path: Path):
    import pytest

    sup = on_free_ports(tmp_path)
    assert sup.config.simulator is not None
    sup.settings.port = sup.config.simulator.port
    with pytest.raises(SystemExit, match=r"given to both the gateway \(RELAY_PORT\) and the sim"):
        sup.preflight()
    sup = on_free_ports(tmp_path)
    sup.settings.worker_metrics_port = sup.settings.port
    with pytest.raises(SystemExit, match="RELAY_WORKER_METRICS_PORT"):
        sup.preflight()
    sup.settings.worker_metrics_port = 0  # off: no port of its own to check
    sup.preflight()
    assert not sup.children


def test_a_relay_broker_on_the_data_dir_is_shared_and_another_relay_ups_refused(
    tmp_path: Path,
):
    """Two relays on one broker share one consumer group: each serves the other's
    requests under its own config.  A `relay broker` is there to be shared."""
    import pytest

    from cli.supervisor import broker_owner_file

    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        running = f"127.0.0.1:{broker.getsockname()[1]}"
        sup = on_free_ports(tmp_path)
        sup.settings.broker_addr_file().write_text(running)
        broker_owner_file(sup.settings).write_text("relay broker")
        sup.preflight()
        assert sup.reused_broker == running
        broker_owner_file(sup.settings).unlink()  # a broker older than the owner file
        sup.preflight()
        assert sup.reused_broker == running
        broker_owner_file(sup.settings).write_text("relay up, pid 4242")
        sup = on_free_ports(tmp_path)
        with pytest.raises(SystemExit, match=r"started by relay up, pid 4242.*own RELAY_DATA_DIR"):
            sup.preflight()
        assert not sup.children
    sup = on_free_ports(tmp_path)
    sup.preflight()  # that broker gone: this relay starts its own
    assert sup.reused_broker is None


def run_without_starting(sup: Supervisor) -> int:
    """``sup.run()`` with nothing able to start, and the signal handlers it installs (and
    ignores on its way out) given back to the test session."""
    import signal

    import pytest

    def no_spawn(name: str, *args: str) -> object:
        pytest.fail(f"{name} was started")

    sup.spawn = no_spawn  # type: ignore[method-assign,assignment]
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return sup.run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_refusal_before_anything_starts_exits_2(tmp_path: Path, capsys) -> None:
    """README: 2 when the config or the environment is refused before anything starts
    (fix the settings), 1 only when a part failed (look at its log)."""
    sup = on_free_ports(tmp_path)
    assert sup.config.simulator is not None
    sup.settings.port = sup.config.simulator.port
    assert run_without_starting(sup) == 2
    assert "given to both the gateway (RELAY_PORT)" in capsys.readouterr().err


def test_a_data_dir_that_cannot_be_made_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    sup = on_free_ports(tmp_path, data_dir=Path("/proc/relay-no-such/var"))  # even for root
    assert run_without_starting(sup) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "RELAY_DATA_DIR: cannot make /proc/relay-no-such/var/logs" in said
