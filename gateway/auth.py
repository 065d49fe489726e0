"""Who is calling: a relay key (Bearer or x-api-key) resolved to its tenant by hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from schemas.config import TenantConfig, hash_key
from schemas.errors import AuthenticationFailed


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_id: str
    policy: TenantConfig


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
    found = relay.keys.get(hash_key(key)) if key else None
    if found is None:
        return None
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


CallerDep = Annotated[Caller, Depends(caller)]
