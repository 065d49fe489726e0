"""Resolve, format and run the official Apache Kafka broker (KRaft, one node) on 127.0.0.1.

The jars come from Maven Central through ``pom.xml`` (``mvn dependency:copy-dependencies``)
and are cached per Kafka version under ``~/.cache/relay-station``; the data directory
keeps the log, the cluster id and the chosen ports, so a restart finds its topics again.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from streams.lifeline import die_with_parent

POM = Path(__file__).with_name("pom.xml")
LOG4J = Path(__file__).with_name("log4j2.properties")


class BrokerError(RuntimeError):
    """The embedded broker cannot start; the message says what to install or set."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, "pom.xml declares kafka.version"
    return match.group(1)


def free_ports() -> tuple[int, int]:
    """Two different free ports, for the broker and its controller.  Both sockets stay
    bound until both are chosen: one closed before the second is drawn may be handed out
    again as the second (about 1 draw in 11 000), and Kafka refuses two listeners on one
    port."""
    with socket.socket() as first, socket.socket() as second:
        first.bind(("127.0.0.1", 0))
        second.bind(("127.0.0.1", 0))
        return int(first.getsockname()[1]), int(second.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether Kafka could listen on ``port``.  It binds with SO_REUSEADDR, as this check
    does: the connections a stopped broker leaves in TIME-WAIT on its own port must not
    move a restarted one to another port (and strand clients told the old address)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


# Serial GC: a 512 MB heap on a small machine gains nothing from G1's concurrent threads.
# The JIT is the JVM's own (tiered, C2 for hot code): once warm, the broker spends ~40 %
# less CPU per message and its hops are ~1 ms faster than on C1 alone (bench/README.md).
DEFAULT_JVM_OPTS = ("-XX:+UseSerialGC",)
# C1 only: compiles less, so a broker that lives for a test session or a benchmark's
# smoke run is ready sooner and does not spend the machine's cores on C2's compiler.
QUICK_START_JVM_OPTS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def short_lived_jvm_opts(configured: list[str] | None) -> list[str]:
    """JVM options for a broker that lives minutes (a test session, a benchmark): the
    configured ones (``Settings.jvm_opts()``), else C1 alone, so C2's compiler does not
    compete for the cores with what is being tested or measured."""
    return list(QUICK_START_JVM_OPTS) if configured is None else configured


class EmbeddedKafka:
    """One broker+controller process; ``start()`` returns its bootstrap address."""

    def __init__(
        self,
        data_dir: Path,
        *,
        cache_dir: Path | None = None,
        heap: str = "512m",
        jvm_opts: list[str] | None = None,
    ):
        self.data_dir = data_dir.resolve()
        self.cache_dir = (
            cache_dir
            or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            / "relay-station"
            / f"kafka-{kafka_version()}"
        )
        self.heap = heap
        # Replacing the defaults (GC and JIT choices): Settings.kafka_jvm_opts.
        self.jvm_opts = jvm_opts if jvm_opts is not None else list(DEFAULT_JVM_OPTS)
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    # -- prerequisites -------------------------------------------------------------
    def java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and not (Path(java_home) / "bin" / "java").exists():
            # Set, it alone says which Java (as for Kafka's own scripts): not silently
            # another one on PATH, nor "install a JDK" when one may well be installed.
            raise BrokerError(
                f"JAVA_HOME={java_home} has no bin/java: point JAVA_HOME at a Java 17+ "
                "installation, or unset it to use the java on PATH"
            )
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise BrokerError(
                "Java 17+ is needed for the embedded Kafka: install a JDK (e.g. "
                "`apt install openjdk-17-jre-headless`), or point the relay at an existing "
                "Kafka with RELAY_KAFKA_BOOTSTRAP=host:9092"
            )
        if _java_major(java) < 17:
            raise BrokerError(f"{java} is older than Java 17; install Java 17+ or set JAVA_HOME")
        return java

    def jars(self) -> Path:
        """The broker's classpath directory, resolved with Maven on first use."""
        done = self.cache_dir / ".complete"
        if done.exists():
            return self.cache_dir
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError(
                "Maven (`mvn`) is needed once to fetch Apache Kafka from Maven Central: "
                "install it (e.g. `apt install maven`), or set RELAY_KAFKA_BOOTSTRAP=host:9092 "
                "to use an existing Kafka"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={self.cache_dir}", "-DincludeScope=runtime",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            # Maven reports on stdout; its launcher and the JVM on stderr.
            said = "\n".join(out[-2000:] for out in (result.stdout, result.stderr) if out.strip())
            raise BrokerError(f"mvn could not resolve Apache Kafka:\n{said}")
        done.write_text(kafka_version())
        return self.cache_dir

    # -- lifecycle -----------------------------------------------------------------
    def _ports(self) -> tuple[int, int]:
        """Keep the ports a data directory was first given, unless taken meanwhile, or
        one port saved for both (an earlier draw's: Kafka would refuse it at every start),
        or a file that does not read as two ports (torn by a crash as it was written)."""
        saved = self.data_dir / "ports"
        try:
            port, cport = (int(p) for p in saved.read_text().split())
        except (OSError, ValueError):  # none saved, or not two numbers
            pass
        else:
            ports = (port, cport)
            if port != cport and all(0 < p < 65536 and port_is_free(p) for p in ports):
                return port, cport
        port, cport = free_ports()
        written = saved.with_name("ports.tmp")  # then renamed: never seen half-written
        written.write_text(f"{port} {cport}")
        os.replace(written, saved)
        return port, cport

    def _properties(self, port: int, cport: int) -> Path:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "log"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # One node: nothing to wait for before the first rebalance.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
            # One client-facing listener on a small machine: fewer threads handing each
            # request between them (defaults 3 network, 8 I/O, 10 background).
            "num.network.threads": "1",
            "num.io.threads": "2",
            "background.threads": "2",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _run_java(self, main: str, *args: str, **popen: object) -> list[str]:
        return [
            self.java(), f"-Xmx{self.heap}", f"-Xms{self.heap}", *self.jvm_opts,
            "-Xshare:auto", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{self.jars()}/*", main, *args,
        ]  # fmt: skip

    def _refuse_if_running(self) -> None:
        """A second broker on one data directory writes into the running one's metadata
        log before Kafka's own lock stops it, and crashes it: refuse before Java starts.
        Kafka holds ``log/.lock`` (an fcntl lock) while it runs."""
        lock = self.data_dir / "log" / ".lock"
        if not lock.exists():
            return
        with open(lock, "a") as held:
            try:
                fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise BrokerError(
                    f"a Kafka broker already runs on {self.data_dir}: use it (the relay "
                    f"finds it there), or stop it first"
                ) from None
            fcntl.lockf(held, fcntl.LOCK_UN)

    def start(self, timeout_s: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        port, cport = self._ports()
        props = self._properties(port, cport)
        cluster = self.data_dir / "cluster.id"
        if not (self.data_dir / "log" / "meta.properties").exists():
            cluster_id = _kafka_uuid()
            fmt = self._run_java(
                "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)
            )
            result = subprocess.run(fmt, capture_output=True, text=True)
            if result.returncode != 0:
                raise BrokerError(
                    f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}"
                )
            cluster.write_text(cluster_id)
        log = open(self.data_dir / "broker.log", "ab")
        self.proc = subprocess.Popen(
            self._run_java("kafka.Kafka", str(props)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # never outlives `relay broker`, a test run, a bench
        )
        self.port = port
        self._wait_ready(timeout_s)
        return self.bootstrap

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = (self.data_dir / "broker.log").read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with {self.proc.returncode}:\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise BrokerError(f"Kafka did not listen on {self.bootstrap} within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.  Like Kafka's
    own ``Uuid.randomUuid``, never one starting with "-", which the storage tool's command
    line would take for an option (1 run in 64 failed to format before this)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
