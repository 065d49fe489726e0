"""`relay report` end to end: the CLI reads the ledger from the real Kafka and prints where
the money went, per cost tag, with the chart it was asked for."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from tests.integration.conftest import read_ledger
from tests.support.stack import DEMO_KEY, Stack


async def test_relay_report_prints_each_cost_tag_and_draws_the_chart(
    relay: Stack, tmp_path: Path
) -> None:
    tag = f"report-{uuid.uuid4().hex[:8]}"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    traces = [uuid.uuid4().hex, uuid.uuid4().hex]
    async with httpx.AsyncClient(base_url=relay.url, timeout=30) as http:
        for trace in traces:  # a paid answer, then the same question from the cache
            headers = {
                "authorization": f"Bearer {DEMO_KEY}",
                "x-relay-cost-tag": tag,
                "x-relay-trace-id": trace,
            }
            reply = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert reply.status_code == 200
    await read_ledger(relay, set(traces))  # both lines are on the ledger by now
    png = tmp_path / "cost.png"
    env = {
        **os.environ,
        "RELAY_KAFKA_BOOTSTRAP": relay.bootstrap,
        "RELAY_TOPIC_PREFIX": relay.prefix,
        "COLUMNS": "200",
    }

    async def report(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli.main", "report", "--by", "tag", *args]
        return await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=120
        )

    recent = await report("--since", "1h")  # read from the ledger's time index
    assert recent.returncode == 0 and tag in recent.stdout, recent.stdout
    done = await report("--chart", str(png))  # the whole ledger, from its first line
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = [line for line in done.stdout.splitlines() if tag in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:4] == [tag, "2", "0", "0"], row  # two requests, no errors, none left
    assert cells[8] == "50.0%", row  # SaveRate: the second was free
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"chart: {png}" in done.stdout
    before = await report("--until", "2020-01-01")  # every line is later than that
    assert before.returncode == 0 and "in that period" in before.stdout, before.stdout
    later = await report("--since", "2099-01-01")  # the time index: nothing to read at all
    assert later.returncode == 0 and "in that period" in later.stdout, later.stdout
    wrong = await report("--since", "last tuesday")
    assert wrong.returncode == 2 and "--since" in wrong.stderr
