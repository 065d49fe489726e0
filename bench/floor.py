"""The Kafka floor: what the relay's two hops cost with no relay code at all.

The relay's realtime path is two Kafka hops (request topic in, reply topic out) around a
worker process.  This measures that shape with nothing else in it, on the same broker:

- **raw**: an echo process that reads the request topic with a plain aiokafka consumer and
  writes each message to the reply topic with a plain aiokafka producer (both linger 0);
- **faust**: the same echo as a Faust agent, on the relay's own tuned Faust app.

A client sends one message at a time (closed loop, like the overhead benchmark's unloaded
scenario) and times each round trip.  The difference between these and the relay's added
latency is what the relay's own code costs; the raw echo is the least any design with two
Kafka hops can add on this machine.

    python -m bench.floor [--quick]
    python -m bench.floor echo raw|faust --bootstrap HOST:PORT --prefix P   (the echo process)
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import (
    WORKDIR,
    CpuMeter,
    bench_kafka,
    console,
    latency_ms,
    print_table,
    write_result,
)
from schemas.settings import Settings
from streams.topics import TopicSpec, ensure_topics

READY_TIMEOUT_S = 90.0


def topic_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}.floor.requests", f"{prefix}.floor.replies"


# -- the echo process --------------------------------------------------------------------
async def raw_echo(bootstrap: str, prefix: str) -> None:
    requests, replies = topic_names(prefix)
    consumer = AIOKafkaConsumer(
        requests, bootstrap_servers=bootstrap, group_id=f"{prefix}-floor", fetch_max_wait_ms=500
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    try:
        async for record in consumer:
            await producer.send(replies, record.value, key=record.key)
    finally:
        await consumer.stop()
        await producer.stop()


def faust_echo(bootstrap: str, prefix: str) -> None:
    from faust.worker import Worker

    from streams.app import make_app

    requests, replies = topic_names(prefix)
    data_dir = Path(tempfile.mkdtemp(prefix="relay-floor-"))
    app = make_app(Settings(topic_prefix=f"{prefix}-floor", data_dir=data_dir), bootstrap)
    source = app.topic(requests, key_serializer="raw", value_serializer="raw")

    async def echo(stream: Any) -> None:
        async for event in stream.events():
            await app.producer.send(
                replies, event.key, event.value, partition=None, timestamp=None, headers=None
            )

    app.agent(source, name="echo")(echo)
    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


# -- the client --------------------------------------------------------------------------
async def measure(
    bootstrap: str, prefix: str, warmup: int, total: int, meter: CpuMeter
) -> list[float]:
    """Round trips of one message at a time, after the echo has answered ``warmup``."""
    requests, replies = topic_names(prefix)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=200)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(replies, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)

    async def round_trip(timeout_s: float) -> float | None:
        token = uuid.uuid4().hex.encode()
        start = time.perf_counter()
        await producer.send(requests, token, key=token)
        deadline = start + timeout_s
        while time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            if any(r.value == token for records in batches.values() for r in records):
                return time.perf_counter() - start
        return None

    try:
        ready_by = time.monotonic() + READY_TIMEOUT_S
        while await round_trip(2.0) is None:  # the echo's consumer is still joining
            if time.monotonic() > ready_by:
                raise RuntimeError("the echo process never answered")
        for _ in range(warmup):
            await round_trip(5.0)
        meter.start()
        out = []
        for _ in range(total):
            took = await round_trip(5.0)
            if took is not None:
                out.append(took)
        return out
    finally:
        await producer.stop()
        await consumer.stop()


def run(kind: str, bootstrap: str, warmup: int, total: int) -> dict[str, Any]:
    prefix = f"f{uuid.uuid4().hex[:8]}"
    requests, replies = topic_names(prefix)
    asyncio.run(ensure_topics(bootstrap, [TopicSpec(requests, 1), TopicSpec(replies, 1)]))
    logdir = WORKDIR / prefix
    logdir.mkdir(parents=True, exist_ok=True)
    args = ["echo", kind, "--bootstrap", bootstrap, "--prefix", prefix]
    with open(logdir / f"echo-{kind}.log", "wb") as log:
        echo = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    meter = CpuMeter({"echo": [echo.pid]})
    try:
        with console.status(f"{kind} echo: {total} round trips…"):
            took = asyncio.run(measure(bootstrap, prefix, warmup, total, meter))
        cpu = meter.stop()
    finally:
        echo.terminate()
        echo.wait(15)
    return {
        "kind": kind,
        "round_trips": len(took),
        "latency_ms": latency_ms(took),
        "echo_cpu_ms_per_message": 1000 * cpu["echo"] / max(1, len(took)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer round trips")
    sub = parser.add_subparsers(dest="command")
    echo = sub.add_parser("echo", help="run an echo process (used by the benchmark itself)")
    echo.add_argument("kind", choices=["raw", "faust"])
    echo.add_argument("--bootstrap", required=True)
    echo.add_argument("--prefix", required=True)
    args = parser.parse_args()
    if args.command == "echo":
        if args.kind == "raw":
            asyncio.run(raw_echo(args.bootstrap, args.prefix))
        else:
            sys.argv = [sys.argv[0], "worker"]  # what Faust's Worker parses
            faust_echo(args.bootstrap, args.prefix)
        return 0

    # The full run's warm-up is long enough for the broker's JIT to compile its hot paths.
    warmup, total = (50, 100) if args.quick else (3000, 1000)
    with bench_kafka() as (bootstrap, _):
        results = [run(kind, bootstrap, warmup, total) for kind in ("raw", "faust")]
    rows = [
        [r["kind"], r["round_trips"]]
        + [f"{r['latency_ms'][q]:.2f}" for q in ("p50", "p90", "p99")]
        + [f"{r['echo_cpu_ms_per_message']:.2f}"]
        for r in results
    ]
    print_table(
        "Kafka floor: two hops around an echo process (closed loop, one at a time)",
        ["echo", "round trips", "p50 ms", "p90 ms", "p99 ms", "echo CPU ms/msg"],
        rows,
    )
    write_result("floor", args.quick, {"runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
