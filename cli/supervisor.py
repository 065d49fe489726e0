"""`relay up`: start every part as a child process, report where they are, stop them all.

Children run in their own sessions so that one Ctrl-C (or SIGTERM, or SIGHUP when the
terminal closes) reaches the supervisor, which then stops them in stages (gateway and
worker, then broker, then simulator) and waits for each, leaving no orphans.  Should the
supervisor itself be killed outright, the kernel stops each child (``streams.lifeline``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape

from schemas.config import RelayConfig, hash_key
from schemas.settings import Settings
from streams.lifeline import die_with_parent
from streams.stopping import STOP_GRACE_S

console = Console(stderr=True)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BROKER_STOP_S = 30.0  # `relay broker` waits up to 20 s for Kafka to close its logs


class Refused(SystemExit):
    """The settings or the config refused before anything starts (exit code 2: fix them),
    unlike a part that failed to start (1)."""


class Supervisor:
    def __init__(self, settings: Settings, config: RelayConfig) -> None:
        self.settings = settings
        self.config = config
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.reused_broker: str | None = None  # a `relay broker` this run uses, not its own
        self.env = dict(os.environ)
        self.env["RELAY_CONFIG"] = str(settings.config)
        self.env["RELAY_DATA_DIR"] = str(settings.data_dir)
        self.logs = settings.data_dir / "logs"
        self._log_starts: dict[str, int] = {}  # where each child's output begins in its log

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        self._log_starts[name] = log.tell()
        proc = subprocess.Popen(
            # -P: the relay's own modules, never a cli.py or schemas/ in the working dir
            [sys.executable, "-P", "-m", "cli.main", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a supervisor killed with -9 leaves no orphans
        )
        self.children.append((name, proc))
        return proc

    def _wait(self, what: str, ready: object, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.children:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited ({proc.returncode}):\n{self._tail(name)}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise SystemExit(f"{what} not ready after {timeout_s:.0f}s; see {self.logs}")

    def _tail(self, name: str) -> str:
        """The end of what this run's ``name`` wrote (its log also holds earlier runs')."""
        with open(self.logs / f"{name}.log", "rb") as log:
            log.seek(self._log_starts.get(name, 0))
            return log.read().decode(errors="replace")[-2000:]

    def _stopped(self) -> str | None:
        """What stopped on its own, if anything: a child, or a broker this run reused."""
        for name, proc in self.children:
            if proc.poll() is not None:
                return (
                    f"{name} stopped on its own ({proc.returncode}); see "
                    f"{self.logs / (name + '.log')}"
                )
        if self.reused_broker and not _answers(self.reused_broker):
            return f"the Kafka broker at {self.reused_broker} (`relay broker`) stopped"
        return None

    def preflight(self) -> None:
        """Refuse before anything starts: a data directory this user cannot write, ports
        shared or already in use, or the data directory's broker another `relay up`'s.
        Sets ``reused_broker`` to a `relay broker` running on the data directory, if one
        does."""
        s = self.settings
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Refused(
                f"RELAY_DATA_DIR: cannot make {self.logs} ({exc.strerror}); give a directory "
                "this user may write (made if missing)"
            ) from None
        if not all(os.access(place, os.W_OK) for place in (s.data_dir, self.logs)):
            raise Refused(f"RELAY_DATA_DIR: {s.data_dir} cannot be written by this user")
        sim = self.config.simulator
        ports = [(s.host, s.port, "gateway", "RELAY_PORT")]
        if sim is not None:
            ports.append(
                (
                    "127.0.0.1",
                    sim.port,
                    "simulator",
                    "simulator.port in the config, and the vendors' base_url that point at it",
                )
            )
        if s.worker_metrics_port:
            ports.append(
                (s.host, s.worker_metrics_port, "worker metrics", "RELAY_WORKER_METRICS_PORT")
            )
        taken: dict[int, tuple[str, str]] = {}
        for _, port, what, setting in ports:
            if port in taken:
                other, other_setting = taken[port]
                raise Refused(
                    f"port {port} is given to both the {other} ({other_setting}) and the "
                    f"{what} ({setting}): each needs its own"
                )
            taken[port] = (what, setting)
        # Ready checks ask these ports: a server of someone else's already on one (another
        # `relay up`) would pass them and the lines printed would point at it.  The worker
        # would fail to serve its metrics only after the ready lines were printed.
        for host, port, what, setting in ports:
            _free(host, port, what, setting)
        self.reused_broker = self._running_broker()

    def _running_broker(self) -> str | None:
        """The address of a `relay broker` already running on the data directory: used,
        as a second broker on the same files would break the first.  One another `relay
        up` started is refused: its worker and this one would share one consumer group,
        each serving the other's requests under its own config."""
        s = self.settings
        addr = s.broker_addr_file()
        running = addr.read_text().strip() if addr.exists() else ""
        if s.kafka_bootstrap or not running or not _answers(running):
            return None
        owner = broker_owner_file(s)
        started_by = owner.read_text().strip() if owner.exists() else BROKER_OWNER
        if started_by != BROKER_OWNER:
            raise Refused(
                f"the Kafka broker at {running} on {s.data_dir} belongs to another relay "
                f"(started by {started_by}), and two relays on one broker would serve each "
                "other's requests: give this one its own RELAY_DATA_DIR (its broker, topics "
                "and logs then stay apart), or stop the other first"
            )
        return running

    def start(self) -> None:
        s = self.settings
        sim = self.config.simulator
        self.preflight()
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
        addr: Path = s.broker_addr_file()
        if self.reused_broker:
            console.print(f"using the embedded Kafka already running at {self.reused_broker}")
        elif not s.kafka_bootstrap:
            addr.unlink(missing_ok=True)  # a stale one, from a broker that is gone
            with console.status("starting Apache Kafka (the first run fetches it with mvn)…"):
                self.spawn("broker", "broker", "--started-by", f"relay up, pid {os.getpid()}")
                self._wait("broker", addr.exists, timeout_s=300)
        with console.status("starting worker and gateway…"):
            self.spawn("worker", "worker")
            self.spawn("gateway", "gateway")
            self.url = f"http://{_connectable(s.host)}:{s.port}"
            self._wait("relay", lambda: _get(f"{self.url}/readyz") == 200, timeout_s=120)

    def run(self) -> int:
        """Start everything and wait; the exit code: 0 when stopped on request (Ctrl-C,
        SIGTERM), 1 when a part failed to start or stopped on its own, 2 when the settings
        or the config are refused before anything starts."""
        for sig in STOP_SIGNALS:  # SIGINT even when started with it ignored
            signal.signal(sig, _interrupt)
        code = 0
        try:
            self.start()
            _say(f"gateway: {self.url}/v1")
            key, alias, why_not = demo_request(self.config, self.settings.demo_key)
            _say(f"relay key: {key}")
            if self.config.simulator is not None:
                _say(f"simulator: {self.sim_url}")
            if alias is not None:
                body = json.dumps(
                    {"model": alias, "messages": [{"role": "user", "content": "hello"}]}
                )
                _say(
                    f"curl: curl -s {self.url}/v1/chat/completions "
                    f"-H 'Authorization: Bearer {key}' "
                    f"-H 'Content-Type: application/json' "
                    f"-d '{body}'"
                )
            else:
                console.print(f"[yellow]no curl line: {escape(why_not)}[/yellow]")
            console.print(f"logs in {self.logs}; Ctrl-C stops everything")
            while (stopped := self._stopped()) is None:
                time.sleep(0.5)
            console.print(f"[red]{escape(stopped)}; shutting down[/red]")
            code = 1
        except KeyboardInterrupt:
            pass
        except SystemExit as exc:
            console.print(f"[red]{escape(str(exc))}[/red]")
            code = 2 if isinstance(exc, Refused) else 1
        finally:
            self.stop()
        return code

    def relay_patience(self) -> float:
        """How long a stopping gateway or worker is waited for before it is killed: its
        drain (RELAY_GATEWAY_DRAIN_S, RELAY_WORKER_DRAIN_S), then its shutdown handing
        the broker what it holds, or the spill file what the broker would not take
        (twice ``STOP_GRACE_S``): killed sooner, those lines are lost."""
        drain = max(self.settings.worker_drain_s, self.settings.gateway_drain_s)
        return drain + 2 * STOP_GRACE_S

    def stop(self) -> None:
        """Stop the relay's own processes first and wait for them: the worker's drain
        answers and meters what it took, which needs the broker and the vendor still up.
        Then the broker, then the simulator.  A second Ctrl-C does not cut this short;
        each stage is bounded and a part that hangs is killed."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        # Long enough for Kafka to close its logs (which `relay broker` gives up to 20 s)
        # before anything is killed outright: a killed `relay broker` would leave its Java
        # running.
        patience = self.relay_patience()
        stages = [("gateway", "worker"), ("broker",), ("simulator",)]
        for stage in stages:
            if stage == ("broker",):
                patience = max(patience, BROKER_STOP_S)
            procs = [p for name, p in self.children if name in stage]
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(patience)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


BROKER_OWNER = "relay broker"  # who started a broker a `relay up` may share


def broker_owner_file(settings: Settings) -> Path:
    """Who started the broker running on the data directory (beside its address)."""
    return settings.data_dir / "broker.owner"


def demo_request(config: RelayConfig, demo_key: str) -> tuple[str, str | None, str]:
    """The key and the chat alias of the curl line `relay up` prints, or ``None`` and
    why there is no alias for it.  The demo key only when this config admits it (a
    config of your own keys has its keys with you: the relay keeps their hashes alone),
    and a chat alias that key's tenant may use (any tenant's, for a key of your own)."""
    found = config.key_index().get(hash_key(demo_key))
    key = demo_key if found else "<one of your relay keys>"
    chat = [alias for alias, m in config.models.items() if m.kind == "chat"]
    if not chat:
        return key, None, "the config has no chat model (kind: chat)"
    tenants = [config.tenants[found[0]]] if found else list(config.tenants.values())
    usable = [alias for alias in chat if any(t.may_use(alias) for t in tenants)]
    if usable:
        return key, usable[0], ""
    if found:
        return (
            key,
            None,
            (
                f"tenant {found[0]}, the demo key's, may use no chat model "
                f"(tenants.{found[0]}.models in the config)"
            ),
        )
    return key, None, "no tenant may use a chat model (tenants.*.models in the config)"


def _say(line: str) -> None:
    """One of the lines scripts parse, on stdout.  A reader that stopped reading
    (`relay up | head -1`) ends the lines, not the relay: stdout goes to /dev/null."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _interrupt(*_: object) -> None:
    """The first stop signal interrupts the wait; any later one is ignored from here on
    (two arriving together, SIGINT and SIGHUP from a closing terminal, would otherwise
    interrupt the staged stop the first one began)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _connectable(host: str) -> str:
    """``host`` as a URL's host to reach a server bound there: a wildcard address is
    reached on loopback, and an IPv6 address goes in brackets."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _answers(bootstrap: str) -> bool:
    """Whether something listens at ``host:port``."""
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _free(host: str, port: int, what: str, setting: str) -> None:
    """Refuse to start when something already listens on the port ``what`` needs."""
    if _answers(f"{_connectable(host)}:{port}"):
        raise Refused(
            f"port {port} ({what}) is already in use — another `relay up`? "
            f"Stop it, or choose another port ({setting})"
        )


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return 0
