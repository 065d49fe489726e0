"""Children of a parent killed outright (kill -9) stop too: no orphaned relay processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it runs no more)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def orphan_after_kill(parent_code: str) -> bool:
    """Run ``parent_code`` (it prints its child's pid), kill it with SIGKILL, and say
    whether that child was still running 10 s later (killing it then)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(parent_code)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gone(child):
        time.sleep(0.1)
    if gone(child):
        return False
    os.kill(child, signal.SIGKILL)
    return True


def test_a_child_started_with_die_with_parent_stops_when_its_parent_is_killed():
    assert not orphan_after_kill(
        """
        import subprocess, sys, time
        from streams.lifeline import die_with_parent
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], preexec_fn=die_with_parent()
        )
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )


def test_relay_up_killed_outright_leaves_no_child_running(tmp_path: Path):
    """`relay up`'s own spawn, with the simulator as the child."""
    assert not orphan_after_kill(
        f"""
        import time
        from pathlib import Path

        from cli.supervisor import Supervisor
        from schemas.config import load_config
        from schemas.settings import Settings
        from tests.support.stack import free_port

        settings = Settings(data_dir=Path({str(tmp_path)!r}))
        sup = Supervisor(settings, load_config(Path({str(ROOT / "relay.example.yaml")!r})))
        sup.env["PYTHONPATH"] = {str(ROOT)!r}
        child = sup.spawn("simulator", "simulator", "--port", str(free_port()))
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )


def test_a_child_spawned_from_another_thread_outlives_that_thread():
    """The kernel would stop it when the spawning thread ends (a pool's, say), not the
    process: such children are spawned without the lifeline."""
    from concurrent.futures import ThreadPoolExecutor

    from streams.lifeline import die_with_parent

    with ThreadPoolExecutor(1) as pool:
        child = pool.submit(
            lambda: subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(30)"],
                preexec_fn=die_with_parent(),
            )
        ).result()
    time.sleep(1)  # the pool's thread is gone by now
    try:
        assert child.poll() is None, "the child died with the thread that spawned it"
    finally:
        child.kill()
        child.wait()
