"""Who is calling: a relay key (Bearer or x-api-key) resolved to its tenant by hash."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from schemas.config import TenantConfig, hash_key
from schemas.errors import AuthenticationFailed, RateLimited
from tables.buckets import TokenBucket


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
