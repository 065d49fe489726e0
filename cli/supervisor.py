"""`relay up`: start every part as a child process, report where they are, stop them all.

Children run in their own sessions so that one Ctrl-C (or SIGTERM) reaches the supervisor,
which then stops them in reverse order and waits, leaving no orphans.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from schemas.config import RelayConfig, hash_key
from schemas.settings import Settings

console = Console(stderr=True)


class Supervisor:
    def __init__(self, settings: Settings, config: RelayConfig) -> None:
        self.settings = settings
        self.config = config
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.env = dict(os.environ)
        self.env["RELAY_CONFIG"] = str(settings.config)
        self.env["RELAY_DATA_DIR"] = str(settings.data_dir)
        self.logs = settings.data_dir / "logs"

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def _wait(self, what: str, ready: object, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.children:
                if proc.poll() is not None:
                    tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise SystemExit(f"{name} exited ({proc.returncode}):\n{tail}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise SystemExit(f"{what} not ready after {timeout_s:.0f}s; see {self.logs}")

    def start(self) -> None:
        s = self.settings
        sim = self.config.simulator
        if sim is not None:
            self.env.setdefault("RELAY_SIM_KEY", f"sim-{secrets.token_hex(8)}")
            port = str(sim.port)
            extra = []
            for k, value in sim.model_dump(exclude={"port"}, exclude_unset=True).items():
                extra += [f"--{k.replace('_', '-')}", str(value)]
            self.spawn(
                "simulator", "simulator", "--port", port, "--api-key-env", "RELAY_SIM_KEY", *extra
            )
            self.sim_url = f"http://127.0.0.1:{port}"
            self._wait("simulator", lambda: _get(f"{self.sim_url}/stats") == 200)
        if not s.kafka_bootstrap:
            addr: Path = s.broker_addr_file()
            addr.unlink(missing_ok=True)
            with console.status("starting Apache Kafka (the first run fetches it with mvn)…"):
                self.spawn("broker", "broker")
                self._wait("broker", addr.exists, timeout_s=300)
        with console.status("starting worker and gateway…"):
            self.spawn("worker", "worker")
            self.spawn("gateway", "gateway")
            self.url = f"http://{s.host}:{s.port}"
            self._wait("relay", lambda: _get(f"{self.url}/readyz") == 200, timeout_s=120)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            self.start()
            print(f"gateway: {self.url}/v1", flush=True)
            # The demo key only when this config admits it (a config of your own keys
            # has its keys with you: the relay keeps their hashes alone).
            admitted = hash_key(self.settings.demo_key) in self.config.key_index()
            key = self.settings.demo_key if admitted else "<one of your relay keys>"
            print(f"relay key: {key}", flush=True)
            if self.config.simulator is not None:
                print(f"simulator: {self.sim_url}", flush=True)
            alias = next(iter(self.config.models))
            body = json.dumps({"model": alias, "messages": [{"role": "user", "content": "hello"}]})
            print(
                f"curl: curl -s {self.url}/v1/chat/completions "
                f"-H 'Authorization: Bearer {key}' "
                f"-H 'Content-Type: application/json' "
                f"-d '{body}'",
                flush=True,
            )
            console.print(f"logs in {self.logs}; Ctrl-C stops everything")
            while all(p.poll() is None for _, p in self.children):
                time.sleep(0.5)
            dead = [n for n, p in self.children if p.poll() is not None]
            console.print(f"[red]{', '.join(dead)} stopped; shutting down[/red]")
        except KeyboardInterrupt:
            pass
        except SystemExit as exc:
            console.print(f"[red]{exc}[/red]")
        finally:
            self.stop()

    def stop(self) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        # Long enough for a worker to finish what it took (RELAY_WORKER_DRAIN_S) and for
        # Kafka to close its logs, before anything is killed outright.
        patience = self.settings.worker_drain_s + 10
        for _, proc in reversed(self.children):
            try:
                proc.wait(patience)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return 0
