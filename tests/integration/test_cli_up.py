"""`relay up`: prints where everything is, answers, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.support.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
def test_relay_up_prints_lines_serves_and_stops_cleanly(
    kafka_bootstrap: str, tmp_path: Path, stop: signal.Signals
):
    """Ctrl-C, or the terminal closing (SIGHUP), stops every child."""
    sim_port, gw_port = free_port(), free_port()
    cfg = yaml.safe_load((ROOT / "relay.example.yaml").read_text())
    cfg["simulator"] = {"port": sim_port}
    for vendor in cfg["vendors"].values():
        vendor["base_url"] = f"http://127.0.0.1:{sim_port}" + (
            "/v1" if vendor["kind"] == "openai" else ""
        )
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "RELAY_KAFKA_BOOTSTRAP": kafka_bootstrap,  # the session's broker: no second JVM
        "RELAY_PORT": str(gw_port),
        "RELAY_DATA_DIR": str(tmp_path / "var"),
        "RELAY_TOPIC_PREFIX": f"up{uuid.uuid4().hex[:6]}",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--config", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        lines: dict[str, str] = {}
        deadline = time.monotonic() + 150
        while "curl" not in lines and time.monotonic() < deadline:
            line = up.stdout.readline() if up.stdout else ""
            if not line:
                assert up.poll() is None, f"relay up exited with {up.returncode}"
                continue
            name, _, value = line.partition(": ")
            lines[name.strip()] = value.strip()
        assert lines.get("gateway") == f"http://127.0.0.1:{gw_port}/v1"
        assert lines.get("relay key") == "rk-demo-relay-station-local"
        assert lines.get("simulator") == f"http://127.0.0.1:{sim_port}"
        assert lines["curl"].startswith("curl ")

        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3, "simulator, worker and gateway run as children"
        r = httpx.post(
            f"{lines['gateway']}/chat/completions",
            headers={"authorization": f"Bearer {lines['relay key']}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        up.send_signal(stop)
        up.wait(60)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"orphans left: {[p.cmdline() for p in alive]}"
    assert up.returncode == 0, "stopped on request: a clean exit"


def test_relay_up_refuses_a_port_already_taken_and_says_so(kafka_bootstrap: str, tmp_path: Path):
    """Its ready checks would pass on another server's port and the printed lines point
    there: a taken port is refused before anything starts, with exit code 2 (the settings
    to fix, as README says, not a part that failed)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "RELAY_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "RELAY_PORT": str(port),
            "RELAY_DATA_DIR": str(tmp_path / "var"),
        }
        up = subprocess.run(
            [sys.executable, "-m", "cli.main", "up", "--config", str(ROOT / "relay.example.yaml")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert up.returncode == 2
    assert f"port {port} (gateway) is already in use" in up.stderr
    assert "gateway:" not in up.stdout
