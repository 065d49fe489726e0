"""The relay without its broker: worker and gateway stop at once and cleanly, and ledger
lines the broker could not take are kept and sent when one starts again.

aiokafka's clients, stopped without a broker, end in a CancelledError of their own tasks;
taken as the stop's own, it made the worker wait out mode's one-minute stop timeout and
the gateway skip closing its producers ("Application shutdown failed")."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaConsumer

from schemas.settings import Settings
from streams.broker.embedded import EmbeddedKafka, short_lived_jvm_opts
from streams.producers import BackgroundProducer
from tests.support.stack import DEMO_KEY, Simulator, example_config, start_stack

STOP_WITHIN_S = 30.0  # three 5 s graces at most; mode's timeout alone was 60 s
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "kept for later"}]}


def test_without_a_broker_the_relay_stops_at_once_and_keeps_its_ledger_lines(
    simulator: Simulator, redis_url: str, tmp_path: Path
) -> None:
    jvm_opts = short_lived_jvm_opts(Settings().jvm_opts())
    kafka = EmbeddedKafka(tmp_path / "kafka", jvm_opts=jvm_opts)
    stack = start_stack(
        example_config(simulator.url),
        bootstrap=kafka.start(),
        redis_url=redis_url,
        workdir=tmp_path / "relay",
    )
    ask = {"headers": {"authorization": f"Bearer {DEMO_KEY}"}, "json": CHAT, "timeout": 60}
    try:
        answer = httpx.post(f"{stack.url}/v1/chat/completions", **ask)  # type: ignore[arg-type]
        assert answer.status_code == 200, answer.text
        kafka.stop()
        time.sleep(3)  # the clients find the broker gone and start retrying
        # Answered from the gateway's own cache, with no broker to take its ledger line.
        hit = httpx.post(f"{stack.url}/v1/chat/completions", **ask)  # type: ignore[arg-type]
        assert hit.status_code == 200 and hit.headers["x-relay-cache"] == "hit-l1"
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
        assert proc.popen.returncode in clean, f"{proc.name}: {proc.popen.returncode}\n{log}"
        assert "Application shutdown failed" not in log, log[-3000:]
        assert "Error while stopping child" not in log, log[-3000:]
        assert "Traceback" not in log and "Exception in callback" not in log, log[-3000:]

    # The broker back (same data), the next producer to start there sends the kept line.
    spill = tmp_path / "relay" / stack.prefix / "spill"
    assert list(spill.glob("*.jsonl")), "the cache hit's ledger line was not kept"
    restarted = EmbeddedKafka(tmp_path / "kafka", jvm_opts=jvm_opts)
    try:
        bootstrap = restarted.start()
        lines = asyncio.run(resend_and_read_ledger(bootstrap, spill, f"{stack.prefix}.usage"))
    finally:
        restarted.stop()
    trace = hit.headers["x-relay-trace-id"]
    [kept] = [line for line in lines if line["trace_id"] == trace]
    assert kept["cache_hit"] and kept["status"] == "ok"
    assert not list(spill.glob("*.jsonl")), "a spill file outlived its lines' delivery"


async def resend_and_read_ledger(bootstrap: str, spill: Path, usage: str) -> list[dict]:
    producer = BackgroundProducer(bootstrap, spill, stop_grace_s=30)
    await producer.start()  # sends what was spilled, in the background; then the file goes
    assert producer._resending is not None
    await producer._resending  # every spilled line queued
    await asyncio.gather(*list(producer._settling))  # ... delivered, and its file gone
    await producer.stop()
    deadline = time.monotonic() + 60
    consumer = AIOKafkaConsumer(
        usage, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    lines: list[dict] = []
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and lines:
                break
            lines += [orjson.loads(r.value) for rs in batches.values() for r in rs if r.value]
        return lines
    finally:
        await consumer.stop()
