"""Who is calling: a relay key (Bearer or x-api-key) resolved to its tenant by hash.

The keys are the config file's, taken anew whenever the file changes (``KeyReload``), so
a key removed from it is refused by every gateway replica within seconds, no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request

from schemas.config import ConfigError, RelayConfig, TenantConfig, hash_key, load_config
from schemas.errors import AuthenticationFailed, RateLimited
from tables.buckets import TokenBucket

log = logging.getLogger("relay.gateway")

KeyIndex = dict[str, tuple[str, str]]  # sha256 of a relay key -> (tenant, key id)


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    policy: TenantConfig


class RefusalThrottle:
    """Slows key guessing: each client address may have ``per_minute`` requests refused
    for a missing or unknown key (a burst of as many, refilling over the minute); past
    that its requests get 429 with ``Retry-After`` instead of 401 — a valid key too,
    unless it was used from that address before it ran out (else a 200 among the 429s
    would still tell a guesser it had found a key).  So clients sharing an address with
    a guesser keep working with the keys they were using.  Per gateway replica, in
    memory, for the ``max_clients`` addresses seen last (and ``max_keys`` keys each).
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000, max_keys: int = 64) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        # Valid keys seen from each address, most recent last (addresses likewise).
        self._used: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def admits(self, client: str, key_hash: str, now: float) -> bool:
        """Whether a request with a valid key from ``client`` goes ahead: yes, unless the
        address is past its allowance and the key was not used from it before."""
        if self.per_minute <= 0:
            return True
        bucket = self._buckets.get(client)
        if bucket is not None and bucket.wait(1, now) > 0.0:
            return key_hash in self._used.get(client, ())
        used = _touch(self._used, client, OrderedDict, self.max_clients)
        _touch(used, key_hash, lambda: None, self.max_keys)
        return True

    def refuse(self, client: str, now: float) -> float:
        """Count one refusal for ``client``: 0.0 while within its allowance, else the
        seconds until it has one again."""
        if self.per_minute <= 0:
            return 0.0
        allowance = self.per_minute
        bucket = _touch(
            self._buckets,
            client,
            lambda: TokenBucket(
                capacity=allowance, refill_per_s=allowance / 60.0, tokens=allowance, updated=now
            ),
            self.max_clients,
        )
        return bucket.take(1, now)


V = TypeVar("V")


def _touch(table: OrderedDict[str, V], key: str, make: Callable[[], V], limit: int) -> V:
    """``table[key]`` (made when missing), now the most recent; the least recent beyond
    ``limit`` entries are forgotten."""
    value = table.pop(key) if key in table else make()
    table[key] = value
    while len(table) > limit:
        table.popitem(last=False)
    return value


def relay_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def known_caller(request: Request) -> Caller | None:
    """The tenant behind the request's relay key, or None: a plain look-up that neither
    refuses nor audits (the edge's; a refusal is the routes' to send and record)."""
    relay = request.app.state.relay
    key = relay_key(request)
    hashed = hash_key(key) if key else None
    found = relay.keys.get(hashed) if hashed else None
    if found is None:
        return None
    client = client_key(request.client.host if request.client else "unknown")
    if hashed is not None and not relay.refusals.admits(client, hashed, time.monotonic()):
        return None  # refused as an unknown key would be: 429 from here
    tenant, key_id = found
    return Caller(tenant, key_id, relay.config.tenants[tenant])


async def caller(request: Request) -> Caller:
    """The tenant behind the request's relay key; 401 when missing or unknown, and an
    ``auth_failed`` audit event that names the key only by fingerprint.

    Async on purpose: FastAPI runs a plain ``def`` dependency in a thread pool, which
    costs more than this whole look-up."""
    who = known_caller(request)
    if who is not None:
        return who
    relay = request.app.state.relay
    key = relay_key(request)
    client = client_key(request.client.host if request.client else "unknown")
    if wait := relay.refusals.refuse(client, time.monotonic()):
        await relay.audit_refusal(request, "auth_failed", detail="too many refused keys")
        raise RateLimited(
            "Too many requests with a missing or unknown relay key from this address.",
            retry_after=wait,
        )
    if not key:
        await relay.audit_refusal(request, "auth_failed", detail="no relay key")
        raise AuthenticationFailed(
            "Missing relay key: send `Authorization: Bearer <relay key>` (or `x-api-key`)."
        )
    fingerprint = hash_key(key)[:12]
    await relay.audit_refusal(
        request, "auth_failed", detail="unknown relay key", key_fingerprint=fingerprint
    )
    raise AuthenticationFailed("Incorrect relay key provided.")


def client_key(host: str) -> str:
    """Who the throttle counts, and the audit folds refusals by: the address, or for IPv6
    its /64 (one host holds a whole /64, and would otherwise guess from a fresh address
    every time)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d, from a dual-stack proxy
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


CallerDep = Annotated[Caller, Depends(caller)]


class KeyHolder(Protocol):
    """What ``KeyReload`` keeps up to date: the relay (``gateway.relay.Relay``)."""

    config: RelayConfig
    keys: KeyIndex


def key_table(running: RelayConfig, read: RelayConfig) -> KeyIndex:
    """The relay keys of ``read`` (the config file as it is now) that a gateway running
    ``running`` takes: those of the tenants it runs with.  A tenant new in the file waits
    for a restart, as everything else in it does (models, vendors, a tenant's models,
    scope or budget): the workers run with the config they started with, and would
    refuse a tenant they do not know."""
    return {h: owner for h, owner in read.key_index().items() if owner[0] in running.tenants}


def besides_keys(running: RelayConfig, read: RelayConfig) -> list[str]:
    """The parts of ``read`` that differ from ``running`` other than relay keys (what
    only a restart of gateways and workers takes): top-level sections, and tenants by
    name."""
    old, new = _without_keys(running), _without_keys(read)
    changed = [
        k for k in sorted(old.keys() | new.keys()) if k != "tenants" and old.get(k) != new.get(k)
    ]
    before, after = old["tenants"], new["tenants"]
    changed += [
        f"tenants.{t}"
        for t in sorted(before.keys() | after.keys())
        if before.get(t) != after.get(t)
    ]
    return changed


def _without_keys(config: RelayConfig) -> dict[str, Any]:
    dumped = config.model_dump()
    for tenant in dumped["tenants"].values():
        tenant.pop("keys")
    return dumped


class KeyReload:
    """Keeps a gateway's relay keys as its config file says: the file is looked at every
    ``every_s`` seconds (and at once on ``poke``: SIGHUP), and when its content changed
    it is loaded and checked as at start, and its keys (``key_table``) replace the ones
    in use in one step.  A file that does not load leaves the keys in use as they are and
    logs why, naming the file and the key path (``ConfigError``); it is tried again once
    it changes.  Polling, not a signal alone: it needs nothing of whoever runs the
    gateway (compose runs replicas, which ``docker kill -s HUP`` would have to name one
    by one), and a file mounted into a container is read as it is now."""

    def __init__(self, relay: KeyHolder, path: Path, every_s: float) -> None:
        self.relay = relay
        self.path = path
        self.every_s = every_s
        self._seen: bytes | None = None  # the digest of the content last looked at
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Look at the file now rather than at the next tick."""
        self._poked.set()

    async def check(self) -> bool:
        """Look at the file; whether its keys were taken (it changed, and loads)."""
        try:
            content = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            seen = b"unreadable: " + str(exc).encode()
            if seen != self._seen:  # said once, not every tick
                log.error("%s: cannot be read (%s); the relay keys in use stay", self.path, exc)
            self._seen = seen
            return False
        digest = hashlib.sha256(content).digest()
        if digest == self._seen:
            return False
        self._seen = digest
        try:
            read = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            log.error("%s\nthe config was not reloaded: the relay keys in use stay", exc)
            return False
        running = self.relay.config
        keys = key_table(running, read)
        old = self.relay.keys
        self.relay.keys = keys  # one reference: a request sees the old table or the new
        removed = sorted(f"{t}/{k}" for h, (t, k) in old.items() if old[h] != keys.get(h))
        added = sorted(f"{t}/{k}" for h, (t, k) in keys.items() if keys[h] != old.get(h))
        if removed or added:
            log.warning(
                "%s: relay keys reloaded (%d in use); refused from now on: %s; taken: %s",
                self.path,
                len(keys),
                ", ".join(removed) or "none",
                ", ".join(added) or "none",
            )
        if waiting := besides_keys(running, read):
            log.warning(
                "%s: changes to %s take effect when the gateways and workers restart "
                "(only relay keys of the tenants running are reloaded)",
                self.path,
                ", ".join(waiting),
            )
        return True

    async def run(self) -> None:
        """Look at the file every ``every_s`` seconds (never if 0, but when poked)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.every_s or None):
                    await self._poked.wait()
            self._poked.clear()
            try:
                await self.check()
            except Exception:  # the next look may do better; the keys in use stay
                log.exception("%s: the config could not be reloaded", self.path)

    def on_sighup(self) -> Callable[[], None]:
        """Look at the file on SIGHUP, as daemons reload; returns what undoes it.  Not
        for a gateway in a terminal: there SIGHUP is the terminal closing, which must
        still stop it (the default), not leave it running with nobody to stop it."""
        if sys.stdin is not None and sys.stdin.isatty():
            return lambda: None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.poke)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            return lambda: None  # not the main thread, or no SIGHUP here (Windows)

        def undo() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return undo
