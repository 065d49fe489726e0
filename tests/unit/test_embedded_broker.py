"""The embedded broker's pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.settings import Settings
from streams.broker.embedded import (
    DEFAULT_JVM_OPTS,
    QUICK_START_JVM_OPTS,
    EmbeddedKafka,
    _kafka_uuid,
    short_lived_jvm_opts,
)


def test_kafka_cluster_ids_never_look_like_a_command_line_option() -> None:
    ids = [_kafka_uuid() for _ in range(3000)]  # ~47 would start with "-" if unchecked
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def broker_command(tmp_path: Path, jvm_opts: list[str] | None) -> list[str]:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / ".complete").touch()  # a resolved classpath: no Maven needed
    kafka = EmbeddedKafka(tmp_path / "data", cache_dir=jars, jvm_opts=jvm_opts)
    return kafka._run_java("kafka.Kafka", "server.properties")


def test_jvm_options_from_the_settings_replace_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_KAFKA_JVM_OPTS", "-XX:+UseG1GC -Dflag='a b'")
    command = broker_command(tmp_path, Settings().jvm_opts())
    assert "-XX:+UseG1GC" in command and "-Dflag=a b" in command
    assert not set(DEFAULT_JVM_OPTS) & set(command)


def test_without_jvm_options_the_broker_runs_on_its_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_KAFKA_JVM_OPTS", raising=False)
    command = broker_command(tmp_path, Settings().jvm_opts())
    assert set(DEFAULT_JVM_OPTS) <= set(command)
    assert command[-2:] == ["kafka.Kafka", "server.properties"]


def test_a_long_lived_broker_gets_the_full_jit_and_a_short_lived_one_c1() -> None:
    assert not any(o.startswith("-XX:TieredStopAtLevel") for o in DEFAULT_JVM_OPTS)
    assert short_lived_jvm_opts(None) == list(QUICK_START_JVM_OPTS)
    assert "-XX:TieredStopAtLevel=1" in QUICK_START_JVM_OPTS
    assert short_lived_jvm_opts(["-XX:+UseG1GC"]) == ["-XX:+UseG1GC"]  # the settings win
    assert short_lived_jvm_opts([]) == []


def test_a_second_broker_on_a_running_brokers_data_dir_is_refused_before_java(
    tmp_path: Path,
) -> None:
    """Kafka holds an fcntl lock on ``log/.lock`` while it runs (checked here by hand
    against the real broker); a second one on the same files would crash the first."""
    import subprocess
    import sys

    from streams.broker import BrokerError, EmbeddedKafka

    (tmp_path / "log").mkdir()
    lock = tmp_path / "log" / ".lock"
    lock.touch()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
            "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(BrokerError, match="already runs"):
            EmbeddedKafka(tmp_path).start()
        assert not (tmp_path / "ports").exists(), "nothing of the running broker's rewritten"
    finally:
        holder.kill()
        holder.wait()


def test_a_port_left_in_time_wait_by_a_stopped_broker_is_still_its_port() -> None:
    """Kafka binds with SO_REUSEADDR: the connections a stopped broker closed leave its
    port in TIME-WAIT, which must not move the restarted broker to another port."""
    import socket

    from streams.broker.embedded import port_is_free

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the broker's side closes first: its port sits in TIME-WAIT
        client.close()
    assert port_is_free(port)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert not port_is_free(port)


def test_a_java_home_without_java_is_named_not_taken_for_java_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JAVA_HOME alone says which Java when set: one with no bin/java is the thing to fix
    (or unset), and the message says so, not "install a JDK"."""
    from streams.broker.embedded import BrokerError

    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "gone"))
    with pytest.raises(BrokerError) as refused:
        EmbeddedKafka(tmp_path / "data", cache_dir=tmp_path).java()
    message = str(refused.value)
    assert f"JAVA_HOME={tmp_path / 'gone'} has no bin/java" in message
    assert "unset it to use the java on PATH" in message and "install a JDK" not in message


def test_mvn_failing_says_what_it_wrote_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maven's launcher and the JVM report on stderr: the error says what they said, not
    only "mvn could not resolve Apache Kafka:" and nothing."""
    from streams.broker import BrokerError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho 'Error: Could not find or load main class "
        "org.codehaus.plexus.classworlds.launcher.Launcher' >&2\nexit 1\n"
    )
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    kafka = EmbeddedKafka(tmp_path / "data", cache_dir=tmp_path / "jars")
    with pytest.raises(BrokerError, match="Could not find or load main class"):
        kafka.jars()
