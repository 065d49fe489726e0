"""Start the relay's real processes for integration tests: simulator, workers, gateways."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from streams.lifeline import die_with_parent

SIM_KEY = "sim-test-key"  # a made-up vendor key, only the simulator knows it
DEMO_KEY = "rk-demo-relay-station-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout_s}s:\n{log.read_text()[-3000:]}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn(name: str, args: list[str], env: dict[str, str], logdir: Path) -> Proc:
    logdir.mkdir(parents=True, exist_ok=True)
    log = logdir / f"{name}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
        preexec_fn=die_with_parent(),  # a test run killed outright leaves no relay behind
    )
    return Proc(name, popen, log)


@dataclass
class Simulator:
    url: str
    proc: Proc

    def configure(self, **changes: Any) -> None:
        httpx.post(f"{self.url}/sim/config", json=changes, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        httpx.post(f"{self.url}/stats/reset", timeout=5).raise_for_status()


def start_simulator(logdir: Path, **flags: Any) -> Simulator:
    port = free_port()
    env = {**os.environ, "RELAY_SIM_KEY": SIM_KEY}
    args = ["simulator", "--port", str(port), "--api-key-env", "RELAY_SIM_KEY"]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = spawn(f"simulator-{port}", args, env, logdir)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/stats", proc.popen, proc.log)
    return Simulator(url, proc)


def example_config(sim_url: str) -> dict[str, Any]:
    """The shipped example config, pointed at a test simulator."""
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "relay.example.yaml").read_text())
    cfg.pop("simulator", None)
    for vendor in cfg["vendors"].values():
        suffix = "/v1" if vendor["kind"] == "openai" else ""
        vendor["base_url"] = sim_url + suffix
    return cfg


@dataclass
class Stack:
    """Workers and gateways sharing one topic prefix (so tests never see each other)."""

    prefix: str
    bootstrap: str
    gateways: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateways[0]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_stack(
    config: dict[str, Any],
    *,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    gateways: int = 1,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Stack:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / f"{prefix}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "RELAY_CONFIG": str(cfg_path),
        "RELAY_KAFKA_BOOTSTRAP": bootstrap,
        "RELAY_REDIS_URL": redis_url,
        "RELAY_TOPIC_PREFIX": prefix,
        "RELAY_DATA_DIR": str(workdir / prefix),
        "RELAY_SIM_KEY": SIM_KEY,
        **(extra_env or {}),
    }
    stack = Stack(prefix, bootstrap)
    logdir = workdir / prefix / "logs"
    for i in range(workers):
        stack.procs.append(spawn(f"worker-{i}", ["worker"], env, logdir))
    for i in range(gateways):
        port = free_port()
        genv = {**env, "RELAY_PORT": str(port), "RELAY_INSTANCE_ID": f"{prefix}-gw{i}"}
        proc = spawn(f"gateway-{i}", ["gateway"], genv, logdir)
        stack.procs.append(proc)
        stack.gateways.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(stack.gateways, stack.procs[workers:], strict=True):
            wait_http(f"{url}/readyz", proc.popen, proc.log, timeout_s=90)
    except Exception:
        stack.stop()
        raise
    return stack
