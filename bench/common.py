"""Benchmark plumbing: a real relay stack, a closed-loop load generator, CPU accounting, output.

The stack is the integration tests' (``tests.support.stack``): one simulator, one worker and
one gateway as real processes on a fresh topic prefix, on an embedded Kafka started here
(or the Kafka named by ``RELAY_KAFKA_BOOTSTRAP``) and the Redis named by ``RELAY_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import uvloop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.settings import Settings
from streams.broker.embedded import EmbeddedKafka, short_lived_jvm_opts
from tests.support.stack import Simulator, Stack, example_config, start_simulator, start_stack

WORKDIR = Path(tempfile.gettempdir()) / "relay-station-bench"
OUT_DIR = Path(__file__).resolve().with_name("out")
console = Console()

Body = dict[str, Any]


# -- the stack ---------------------------------------------------------------------------
@dataclass
class BenchStack:
    """A running simulator + relay, and the PIDs whose CPU time the benchmarks account."""

    sim: Simulator
    relay: Stack
    broker_pid: int | None

    def cpu_groups(self) -> dict[str, list[int]]:
        """Process groups by role; ``worker`` + ``gateway`` are the relay's own cost."""
        groups: dict[str, list[int]] = {"worker": [], "gateway": []}
        for proc in self.relay.procs:
            groups[proc.name.split("-")[0]].append(proc.popen.pid)
        groups["broker"] = [self.broker_pid] if self.broker_pid else []
        groups["simulator"] = [self.sim.proc.popen.pid]
        groups["loadgen"] = [os.getpid()]
        return groups


@contextmanager
def bench_kafka() -> Iterator[tuple[str, int | None]]:
    """The Kafka in ``RELAY_KAFKA_BOOTSTRAP``, else an embedded one in a temp dir, removed
    afterwards: (bootstrap, the broker's pid when it is ours)."""
    bootstrap = Settings().kafka_bootstrap
    if bootstrap:
        yield bootstrap, None
        return
    kafka_dir = Path(tempfile.mkdtemp(prefix="relay-bench-kafka-"))
    kafka = EmbeddedKafka(kafka_dir, jvm_opts=short_lived_jvm_opts(Settings().jvm_opts()))
    try:
        with console.status("starting embedded Kafka…"):
            bootstrap = kafka.start()
        yield bootstrap, kafka.proc.pid if kafka.proc else None
    finally:
        kafka.stop()
        shutil.rmtree(kafka_dir, ignore_errors=True)


@contextmanager
def bench_stack(
    edit_config: Callable[[dict[str, Any]], None] | None = None, **sim_flags: Any
) -> Iterator[BenchStack]:
    """Start Kafka (unless one is configured), a simulator, one worker and one gateway."""
    with bench_kafka() as (bootstrap, broker_pid):
        with _relay(bootstrap, edit_config, sim_flags) as (sim, relay):
            yield BenchStack(sim, relay, broker_pid)


@contextmanager
def _relay(
    bootstrap: str,
    edit_config: Callable[[dict[str, Any]], None] | None,
    sim_flags: dict[str, Any],
) -> Iterator[tuple[Simulator, Stack]]:
    settings = Settings()
    sim: Simulator | None = None
    relay: Stack | None = None
    try:
        with console.status("starting simulator, worker and gateway…"):
            sim = start_simulator(WORKDIR / "sim", **sim_flags)
            config = example_config(sim.url)
            if edit_config:
                edit_config(config)
            relay = start_stack(
                config, bootstrap=bootstrap, redis_url=settings.redis_url, workdir=WORKDIR
            )
        console.print(f"[dim]logs: {WORKDIR / relay.prefix / 'logs'}[/dim]")
        yield sim, relay
    finally:
        if relay:
            relay.stop()
        if sim:
            sim.proc.stop()


# -- load --------------------------------------------------------------------------------
@dataclass
class LoadResult:
    """Latencies of the successful requests, failures by cause, and the wall time taken."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time."""
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0


def run_load(
    url: str,
    headers: dict[str, str],
    make_body: Callable[[], Body],
    concurrency: int,
    *,
    total: int | None = None,
    duration_s: float | None = None,
    label: str | None = None,
) -> LoadResult:
    """Closed loop: ``concurrency`` clients each send the next request when one answers.

    Stops after ``total`` requests or ``duration_s`` seconds (whichever comes first);
    with a ``label`` a progress bar is shown.
    """
    assert total or duration_s, "give total or duration_s"
    return uvloop.run(_load(url, headers, make_body, concurrency, total, duration_s, label))


def load_client(
    headers: dict[str, str], connections: int, base_url: str | None = None
) -> aiohttp.ClientSession:
    """The load generator's client: plain aiohttp, the leanest Python HTTP client here, so
    it takes as little as it can of the CPU it shares with the relay (httpx adds ~1.5 ms
    to every sequential request, which would swamp the latencies measured)."""
    return aiohttp.ClientSession(
        base_url=base_url,
        headers=headers,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def _load(
    url: str,
    headers: dict[str, str],
    make_body: Callable[[], Body],
    concurrency: int,
    total: int | None,
    duration_s: float | None,
    label: str | None,
) -> LoadResult:
    result = LoadResult()
    hdrs = {"content-type": "application/json", **headers}
    issued = 0
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if total else TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=label is None,
        # No refresh thread: it would fight the event loop for the GIL and show up in
        # millisecond latencies.  The loop redraws the bar itself, twice a second.
        auto_refresh=False,
    )
    task = progress.add_task(label or "", total=total or duration_s)

    async with load_client(hdrs, concurrency) as client:
        start = time.perf_counter()
        deadline = start + duration_s if duration_s else float("inf")

        async def client_loop() -> None:
            nonlocal issued
            while (total is None or issued < total) and time.perf_counter() < deadline:
                issued += 1
                content = orjson.dumps(make_body())
                t0 = time.perf_counter()
                try:
                    async with client.post(url, data=content) as resp:
                        answer = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    _fail(result, type(exc).__name__, repr(exc))
                else:
                    done = time.perf_counter()
                    if resp.status == 200:
                        result.latencies_s.append(done - t0)
                    else:
                        _fail(
                            result, f"http {resp.status}", answer[:500].decode("utf-8", "replace")
                        )
                if total:
                    progress.advance(task)
                else:
                    progress.update(task, completed=min(time.perf_counter(), deadline) - start)

        async def redraw() -> None:
            while True:
                progress.refresh()
                await asyncio.sleep(0.5)

        with progress:
            painter = asyncio.create_task(redraw())
            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
            painter.cancel()
        result.elapsed_s = time.perf_counter() - start
    return result


def _fail(result: LoadResult, cause: str, detail: str) -> None:
    result.errors[cause] += 1
    if len(result.error_samples) < 5:
        result.error_samples.append(f"{cause}: {detail}")


# -- numbers -----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_ms(values_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds."""
    ms = [v * 1000 for v in values_s]
    summary = {f"p{q}": percentile(ms, q) for q in (50, 90, 99)}
    summary["mean"] = sum(ms) / len(ms) if ms else float("nan")
    summary["max"] = max(ms, default=float("nan"))
    return summary


class CpuMeter:
    """User + system CPU seconds spent by named process groups between start() and stop().

    Only the listed processes count, not their children: the benchmark process is the
    parent of the whole stack, and its ``loadgen`` group must not absorb the relay's time.
    ``other`` is the busy CPU time of the whole machine outside the groups: other
    people's work competing for the same cores, which makes a run noisy.
    """

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, procs in self.groups.items():
            out[name] = 0.0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                out[name] += times.user + times.system
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        out["other"] = busy - sum(out.values())
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        now = self._read()
        return {name: now[name] - self._start[name] for name in now}


# -- output ------------------------------------------------------------------------------
def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table; the first column left-aligned, the rest right-aligned."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def write_result(benchmark: str, quick: bool, data: dict[str, Any]) -> Path:
    """Write ``bench/out/<benchmark>[-quick].json`` (the run's data under what, when and
    where it ran) and return its path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{benchmark}{'-quick' if quick else ''}.json"
    record = {
        "benchmark": benchmark,
        "quick": quick,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **data,
    }
    path.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    return path
