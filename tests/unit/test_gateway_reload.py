"""A relay key removed from the config file is refused, and one added is taken, by a
running gateway within its look interval (``KeyReload``): no restart.  A file that does
not load leaves the keys in use.

An integration test would do the same through a real stack: start it with
``RELAY_CONFIG_RELOAD_S=0.2`` on a copy of its config, answer 200 to key A, write the copy
again with key A replaced by key B, and after half a second expect 401 for A and 200 for
B from every gateway replica."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.auth import KeyReload
from gateway.relay import Relay
from schemas.config import hash_key, load_config
from tests.support.gateway import DEMO_KEY, EXAMPLE, client, gateway_app

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
NEW_KEY = "rk-new-key-for-the-demo-tenant-0123456789"


def written(path: Path, keys: dict[str, str], **tenants: dict[str, object]) -> Path:
    """The example config with the demo tenant's keys (id -> key) and ``tenants`` more."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["tenants"]["demo"]["keys"] = [{"id": i, "sha256": hash_key(k)} for i, k in keys.items()]
    raw["tenants"].update(tenants)
    path.write_text(yaml.safe_dump(raw))
    return path


async def status(http: httpx.AsyncClient, key: str) -> int:
    reply = await http.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
    )
    return reply.status_code


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return written(tmp_path / "relay.yaml", {"demo-key": DEMO_KEY})


async def test_a_removed_key_is_refused_and_a_new_one_taken(config_file: Path) -> None:
    app, _ = gateway_app(config=load_config(config_file))
    relay: Relay = app.state.relay
    keys = KeyReload(relay, config_file, every_s=5.0)
    async with client(app) as http:
        assert await keys.check()  # the first look: the same keys as at start
        assert (await status(http, DEMO_KEY), await status(http, NEW_KEY)) == (200, 401)
        written(config_file, {"rotated": NEW_KEY})
        assert await keys.check()
        assert (await status(http, DEMO_KEY), await status(http, NEW_KEY)) == (401, 200)
        assert not await keys.check()  # unchanged since: nothing loaded again


async def test_the_file_is_looked_at_every_interval_and_on_a_poke(config_file: Path) -> None:
    app, _ = gateway_app(config=load_config(config_file))
    async with client(app) as http:
        watcher = asyncio.create_task(KeyReload(app.state.relay, config_file, 0.05).run())
        try:
            written(config_file, {"rotated": NEW_KEY})
            await asyncio.sleep(0.3)  # a few intervals
            assert await status(http, DEMO_KEY) == 401
        finally:
            watcher.cancel()
        never = KeyReload(app.state.relay, config_file, every_s=0)  # SIGHUP only
        watcher = asyncio.create_task(never.run())
        try:
            written(config_file, {"back": DEMO_KEY})
            await asyncio.sleep(0.1)
            assert await status(http, DEMO_KEY) == 401  # not looked at without a poke
            never.poke()
            await asyncio.sleep(0.1)
            assert await status(http, DEMO_KEY) == 200
        finally:
            watcher.cancel()


async def test_a_config_that_does_not_load_keeps_the_keys_in_use(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = gateway_app(config=load_config(config_file))
    keys = KeyReload(app.state.relay, config_file, every_s=5.0)
    await keys.check()
    broken = {"keys": [{"id": "rotated", "sha256": hash_key(NEW_KEY)}], "models": ["no-such-alias"]}
    written(config_file, {}, demo=broken)
    with caplog.at_level(logging.ERROR, logger="relay.gateway"):
        assert not await keys.check()
    said = caplog.text
    assert str(config_file) in said and "tenants.demo.models" in said and "no-such-alias" in said
    assert "relay keys in use stay" in said
    async with client(app) as http:
        assert await status(http, DEMO_KEY) == 200
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="relay.gateway"):
        assert not await keys.check()  # the same broken file: said once
    assert not caplog.text
    written(config_file, {"rotated": NEW_KEY})  # fixed: taken
    assert await keys.check()
    async with client(app) as http:
        assert (await status(http, DEMO_KEY), await status(http, NEW_KEY)) == (401, 200)


async def test_a_new_tenant_and_other_changes_wait_for_a_restart(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The workers run with the config they started with (they would refuse a tenant
    they do not know): only keys of the tenants running are taken."""
    app, _ = gateway_app(config=load_config(config_file))
    keys = KeyReload(app.state.relay, config_file, every_s=5.0)
    await keys.check()
    newcomer = {"keys": [{"id": "k", "sha256": hash_key(NEW_KEY)}], "models": ["*"]}
    written(config_file, {"demo-key": DEMO_KEY}, acme=newcomer)
    with caplog.at_level(logging.WARNING, logger="relay.gateway"):
        assert await keys.check()
    assert "tenants.acme" in caplog.text and "restart" in caplog.text
    async with client(app) as http:
        assert (await status(http, DEMO_KEY), await status(http, NEW_KEY)) == (200, 401)


async def test_a_key_removed_says_which_in_the_log(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = gateway_app(config=load_config(config_file))
    keys = KeyReload(app.state.relay, config_file, every_s=5.0)
    with caplog.at_level(logging.WARNING, logger="relay.gateway"):
        await keys.check()
        assert not caplog.text  # nothing changed: nothing said
        written(config_file, {"rotated": NEW_KEY})
        await keys.check()
    assert "demo/demo-key" in caplog.text and "demo/rotated" in caplog.text
    assert DEMO_KEY not in caplog.text and NEW_KEY not in caplog.text


class _NoTerminal:
    def isatty(self) -> bool:
        return False


async def test_sighup_looks_at_the_file_at_once(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    app, _ = gateway_app(config=load_config(config_file))
    keys = KeyReload(app.state.relay, config_file, every_s=0)
    monkeypatch.setattr("sys.stdin", _NoTerminal())  # run as a service, not in a terminal
    undo = keys.on_sighup()
    watcher = asyncio.create_task(keys.run())
    try:
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        written(config_file, {"rotated": NEW_KEY})
        signal.raise_signal(signal.SIGHUP)
        await asyncio.sleep(0.2)
        async with client(app) as http:
            assert (await status(http, DEMO_KEY), await status(http, NEW_KEY)) == (401, 200)
    finally:
        undo()
        watcher.cancel()
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
