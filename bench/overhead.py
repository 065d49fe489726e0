"""Relay overhead: one chat workload sent straight to the simulator, then through the relay.

"unloaded" (1 client, a vendor that answers at once) shows the latency the relay adds;
"loaded" (32 clients, a 200 ms vendor) shows whether the relay keeps up with the vendor.
Every prompt is unique and carries ``x-relay-cache: bypass``, so neither the cache nor
coalescing can help: each relay request is a full gateway -> Kafka -> worker -> vendor trip.

    python -m bench.overhead [--quick]
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import (
    BenchStack,
    Body,
    CpuMeter,
    bench_stack,
    console,
    latency_ms,
    print_table,
    run_load,
    write_result,
)
from tests.support.stack import DEMO_KEY, SIM_KEY

MAX_ADDED_P50_MS = 5.0
MIN_THROUGHPUT_RATIO = 0.95
NOISY_CORES = 0.25  # other processes busier than this during a phase make the run unreliable
RELAY_ROLES = ("worker", "gateway")  # the relay's own processes; broker is shared infra


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    sim_latency_ms: float
    warmup: int
    total: int | None = None
    duration_s: float | None = None


FULL = (
    Scenario("unloaded", concurrency=1, sim_latency_ms=0, warmup=30, total=300),
    Scenario("loaded", concurrency=32, sim_latency_ms=200, warmup=64, duration_s=20),
)
QUICK = (
    Scenario("unloaded", concurrency=1, sim_latency_ms=0, warmup=10, total=60),
    Scenario("loaded", concurrency=32, sim_latency_ms=200, warmup=32, duration_s=5),
)
# Before any scenario, this many requests (8 clients, a vendor that answers at once) warm
# the whole stack both ways: the broker's JIT compiles its hot paths in the first few
# thousand messages, and a relay runs for days, so the benchmark measures it warm.
STACK_WARMUP = 3000
QUICK_STACK_WARMUP = 200


def chat_body() -> Body:
    """A non-streaming chat request whose prompt was never seen before."""
    prompt = f"Benchmark prompt {uuid.uuid4().hex}: say something short."
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}


def endpoint(stack: BenchStack, target: str) -> tuple[str, dict[str, str]]:
    """URL and headers for ``direct`` (the simulator) or ``relay`` (the gateway)."""
    base, key = (stack.sim.url, SIM_KEY) if target == "direct" else (stack.relay.url, DEMO_KEY)
    return f"{base}/v1/chat/completions", {
        "authorization": f"Bearer {key}",
        "x-relay-cache": "bypass",
    }


def phase(stack: BenchStack, sc: Scenario, target: str) -> dict[str, Any]:
    """Warm up, then measure one target: throughput, latency, CPU by role, vendor calls."""
    url, headers = endpoint(stack, target)
    run_load(url, headers, chat_body, sc.concurrency, total=sc.warmup)
    stack.sim.reset()
    meter = CpuMeter(stack.cpu_groups())
    meter.start()
    load = run_load(
        url,
        headers,
        chat_body,
        sc.concurrency,
        total=sc.total,
        duration_s=sc.duration_s,
        label=f"{sc.name} · {target}",
    )
    cpu = meter.stop()
    requests = load.ok + sum(load.errors.values())
    cpu_ms = {role: 1000 * s / max(requests, 1) for role, s in cpu.items() if role != "other"}
    cpu_ms["relay"] = sum(cpu_ms[role] for role in RELAY_ROLES)
    busy_elsewhere = cpu["other"] / load.elapsed_s if load.elapsed_s else 0.0
    return {
        "requests": requests,
        "ok": load.ok,
        "errors": dict(load.errors),
        "error_samples": load.error_samples,
        "elapsed_s": load.elapsed_s,
        "throughput_rps": load.throughput,
        "latency_ms": latency_ms(load.latencies_s),
        "vendor_calls": stack.sim.stats()["total"],
        "cpu_s": cpu,
        "cpu_ms_per_request": cpu_ms,
        "other_processes_cores": busy_elsewhere,
    }


def warm(stack: BenchStack, requests: int) -> None:
    """Send ``requests`` through the relay and as many straight to the simulator."""
    stack.sim.configure(latency_ms=0)
    for target in ("direct", "relay"):
        url, headers = endpoint(stack, target)
        run_load(url, headers, chat_body, 8, total=requests, label=f"warm-up · {target}")


def compare(direct: dict[str, Any], relay: dict[str, Any]) -> dict[str, float]:
    """Relay against direct: throughput ratio, added latency, relay CPU per request."""
    d, r = direct["latency_ms"], relay["latency_ms"]
    return {
        "throughput_ratio": relay["throughput_rps"] / direct["throughput_rps"],
        "added_p50_ms": r["p50"] - d["p50"],
        "added_p90_ms": r["p90"] - d["p90"],
        "added_p99_ms": r["p99"] - d["p99"],
        "relay_cpu_ms_per_request": relay["cpu_ms_per_request"]["relay"],
        "broker_cpu_ms_per_request": relay["cpu_ms_per_request"]["broker"],
        "other_cores": max(direct["other_processes_cores"], relay["other_processes_cores"]),
    }


def show_scenario(sc: Scenario, direct: dict[str, Any], relay: dict[str, Any]) -> None:
    """One table: direct and relay side by side, with the relay's ratio or added latency."""
    cmp = compare(direct, relay)
    dl, rl = direct["latency_ms"], relay["latency_ms"]
    dc, rc = direct["cpu_ms_per_request"], relay["cpu_ms_per_request"]
    rows: list[list[Any]] = [
        ["requests (ok)", f"{direct['ok']}", f"{relay['ok']}", ""],
        ["errors", _errors(direct), _errors(relay), ""],
        ["vendor calls", direct["vendor_calls"], relay["vendor_calls"], ""],
        [
            "throughput req/s",
            f"{direct['throughput_rps']:.1f}",
            f"{relay['throughput_rps']:.1f}",
            f"{cmp['throughput_ratio']:.3f}x",
        ],
    ]
    for q in ("p50", "p90", "p99"):
        added = rl[q] - dl[q]
        rows.append([f"latency {q} ms", f"{dl[q]:.2f}", f"{rl[q]:.2f}", f"{added:+.2f}"])
    for role in ("relay", *RELAY_ROLES, "broker", "simulator", "loadgen"):
        name = "relay (worker+gateway)" if role == "relay" else role
        rows.append([f"CPU ms/req {name}", f"{dc[role]:.2f}", f"{rc[role]:.2f}", ""])
    title = f"{sc.name}: concurrency {sc.concurrency}, simulator latency {sc.sim_latency_ms:g} ms"
    print_table(title, ["", "direct", "relay", "relay vs direct"], rows)
    for sample in relay["error_samples"] + direct["error_samples"]:
        console.print(f"[red]{sample}[/red]")


def _errors(result: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "0"


def checks(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Target vs measured, one row per check; ``passed`` None means informational."""
    rows: list[tuple[str, str, str, str, bool | None]] = []
    for name, res in results.items():
        cmp, direct, relay = res["compare"], res["direct"], res["relay"]
        if name == "unloaded":
            added = cmp["added_p50_ms"]
            target = f"<= {MAX_ADDED_P50_MS:g} ms"
            rows.append((name, "added p50", target, f"{added:.2f} ms", added <= MAX_ADDED_P50_MS))
        if name == "loaded":
            ratio = cmp["throughput_ratio"]
            target = f">= {MIN_THROUGHPUT_RATIO:g}x"
            ok = ratio >= MIN_THROUGHPUT_RATIO
            rows.append((name, "throughput relay/direct", target, f"{ratio:.3f}x", ok))
        failed = sum(direct["errors"].values()) + sum(relay["errors"].values())
        rows.append((name, "failed requests", "0", str(failed), failed == 0))
        calls = f"{relay['vendor_calls']}/{relay['requests']}"
        reached = relay["vendor_calls"] == relay["requests"]
        rows.append((name, "vendor calls = requests", "no cache", calls, reached))
        rows.append((name, "added p99", "-", f"{cmp['added_p99_ms']:.2f} ms", None))
        relay_cpu = f"{cmp['relay_cpu_ms_per_request']:.2f} ms"
        rows.append((name, "relay CPU per request", "-", relay_cpu, None))
        broker_cpu = f"{cmp['broker_cpu_ms_per_request']:.2f} ms"
        rows.append((name, "broker CPU per request", "-", broker_cpu, None))
        noise = f"{cmp['other_cores']:.2f} cores"
        rows.append((name, "other processes (noise)", "-", noise, None))
    keys = ("scenario", "check", "target", "measured", "passed")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args(argv)
    scenarios = QUICK if args.quick else FULL

    results: dict[str, dict[str, Any]] = {}
    with bench_stack() as stack:
        warm(stack, QUICK_STACK_WARMUP if args.quick else STACK_WARMUP)
        for sc in scenarios:
            stack.sim.configure(latency_ms=sc.sim_latency_ms)
            direct = phase(stack, sc, "direct")
            relay = phase(stack, sc, "relay")
            show_scenario(sc, direct, relay)
            results[sc.name] = {
                "scenario": asdict(sc),
                "direct": direct,
                "relay": relay,
                "compare": compare(direct, relay),
            }

    rows = checks(results)
    mark = {True: "[green]PASS[/green]", False: "[red]MISS[/red]", None: "[dim]info[/dim]"}
    print_table(
        "overhead: target vs measured",
        ["scenario", "check", "target", "measured", "result"],
        [[r["scenario"], r["check"], r["target"], r["measured"], mark[r["passed"]]] for r in rows],
    )
    path = write_result("overhead", args.quick, {"results": results, "checks": rows})
    noisy = [n for n, r in results.items() if r["compare"]["other_cores"] > NOISY_CORES]
    if noisy:
        console.print(
            f"[yellow]other processes kept more than {NOISY_CORES:g} cores busy during "
            f"{', '.join(noisy)}: rerun on a quiet machine[/yellow]"
        )
    console.print(f"[dim]wrote {path}[/dim]")
    return 1 if any(r["passed"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
