"""Worker and gateway told to stop while their broker is gone stop at once, cleanly.

aiokafka's clients, stopped without a broker, end in a CancelledError of their own tasks;
taken as the stop's own, it made the worker wait out mode's one-minute stop timeout and
the gateway skip closing its producers ("Application shutdown failed")."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from schemas.settings import Settings
from streams.broker.embedded import EmbeddedKafka, short_lived_jvm_opts
from tests.support.stack import DEMO_KEY, Simulator, example_config, start_stack

STOP_WITHIN_S = 20.0  # the worker drains nothing here; mode's timeout alone was 60 s


def test_worker_and_gateway_stop_cleanly_and_at_once_without_their_broker(
    simulator: Simulator, redis_url: str, tmp_path: Path
) -> None:
    kafka = EmbeddedKafka(tmp_path / "kafka", jvm_opts=short_lived_jvm_opts(Settings().jvm_opts()))
    stack = start_stack(
        example_config(simulator.url),
        bootstrap=kafka.start(),
        redis_url=redis_url,
        workdir=tmp_path / "relay",
    )
    try:
        answer = httpx.post(
            f"{stack.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {DEMO_KEY}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        kafka.stop()
        time.sleep(3)  # the clients find the broker gone and start retrying
        for proc in stack.procs:
            proc.popen.terminate()
        started = time.monotonic()
        for proc in stack.procs:
            proc.popen.wait(timeout=STOP_WITHIN_S + 30)
        took = time.monotonic() - started
    finally:
        stack.stop()
        kafka.stop()
    assert took < STOP_WITHIN_S, f"stopping took {took:.0f}s"
    for proc in stack.procs:
        log = proc.log.read_text(errors="replace")
        # uvicorn, stopped by a signal, ends by raising it again once it has shut down
        clean = (0, -signal.SIGTERM) if proc.name.startswith("gateway") else (0,)
        assert proc.popen.returncode in clean, (
            f"{proc.name}: {proc.popen.returncode}\n{log[-3000:]}"
        )
        assert "Application shutdown failed" not in log, log[-3000:]
        assert "Error while stopping child" not in log, log[-3000:]
