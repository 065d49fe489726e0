"""The audit topic, end to end: refused keys (by fingerprint only), denied models, and
which config every process started with; `relay audit` prints them."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.config import hash_key
from schemas.envelope import AuditEvent
from streams.topics import Topics
from tests.support.stack import DEMO_KEY, Simulator, Stack, example_config

WRONG_KEY = "rk-not-a-relay-key-audit-tests"
NARROW_KEY = "rk-narrow-tenant-audit-tests"


@pytest.fixture(scope="module")
def audited(stack_factory: Any, simulator: Simulator) -> Stack:
    cfg = example_config(simulator.url)
    cfg["tenants"]["narrow"] = {
        "keys": [{"id": "narrow-key", "sha256": hash_key(NARROW_KEY)}],
        "models": ["llama3"],
    }
    return stack_factory(cfg)  # type: ignore[no-any-return]


async def audit_messages(stack: Stack, want: set[str], timeout_s: float = 15) -> list[bytes]:
    """The raw audit messages, once every kind in ``want`` is among them; a kind may name
    the role too (``started:worker``), since each process announces itself on its own."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=None)
    await consumer.start()
    tp = TopicPartition(Topics(stack.prefix).audit.name, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    raw: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                raw += [r.value or b"" for r in records]
            events = [AuditEvent.model_validate_json(r) for r in raw]
            seen = {e.kind for e in events} | {f"{e.kind}:{e.role}" for e in events if e.role}
            if want <= seen:
                return raw
    finally:
        await consumer.stop()
    raise AssertionError(f"audit events seen: {raw!r}")


async def test_refusals_and_starts_are_audited_without_secrets(audited: Stack) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{audited.url}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as http:
        wrong = await http.post(url, json=body, headers={"authorization": f"Bearer {WRONG_KEY}"})
        missing = await http.post(url, json=body)
        denied = await http.post(url, json=body, headers={"authorization": f"Bearer {NARROW_KEY}"})
        allowed = await http.post(url, json=body, headers={"authorization": f"Bearer {DEMO_KEY}"})
    assert (wrong.status_code, missing.status_code, denied.status_code) == (401, 401, 404)
    assert allowed.status_code == 200

    raw = await audit_messages(
        audited, {"auth_failed", "access_denied", "started:gateway", "started:worker"}
    )
    assert not any(WRONG_KEY.encode() in m or NARROW_KEY.encode() in m for m in raw)
    events = [AuditEvent.model_validate_json(m) for m in raw]
    failed = [e for e in events if e.kind == "auth_failed"]
    assert {e.detail for e in failed} == {"unknown relay key", "no relay key"}
    [unknown] = [e for e in failed if e.key_fingerprint]
    assert unknown.key_fingerprint == hash_key(WRONG_KEY)[:12]
    assert unknown.path == "/v1/chat/completions" and unknown.client == "127.0.0.1"
    [refused] = [e for e in events if e.kind == "access_denied"]
    assert (refused.tenant, refused.key_id, refused.model) == (
        "narrow",
        "narrow-key",
        "gpt-4o-mini",
    )
    started = {e.role: e.config_sha256 for e in events if e.kind == "started"}
    assert set(started) == {"gateway", "worker"}
    assert started["gateway"] == started["worker"], "both loaded the same config"


async def test_relay_audit_prints_the_log(audited: Stack) -> None:
    await audit_messages(audited, {"auth_failed"})
    env = {
        **os.environ,
        "RELAY_KAFKA_BOOTSTRAP": audited.bootstrap,
        "RELAY_TOPIC_PREFIX": audited.prefix,
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "audit", "--kind", "auth_failed",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode()
    printed = stdout.decode()
    assert "auth_failed" in printed
    assert f"key sha256:{hash_key(WRONG_KEY)[:12]}" in printed
    assert "started" not in printed
