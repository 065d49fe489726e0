"""Who is calling: a relay key (Bearer or x-api-key) resolved to its tenant by hash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from schemas.config import RelayConfig, TenantConfig, hash_key
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


async def caller(request: Request) -> Caller:
    """The tenant behind the request's relay key; 401 when missing or unknown.

    Async on purpose: FastAPI runs a plain ``def`` dependency in a thread pool, which
    costs more than this whole look-up."""
    config: RelayConfig = request.app.state.relay.config
    key = relay_key(request)
    if not key:
        raise AuthenticationFailed(
            "Missing relay key: send `Authorization: Bearer <relay key>` (or `x-api-key`)."
        )
    found = request.app.state.relay.keys.get(hash_key(key))
    if found is None:
        raise AuthenticationFailed("Incorrect relay key provided.")
    tenant, key_id = found
    return Caller(tenant, key_id, config.tenants[tenant])


CallerDep = Annotated[Caller, Depends(caller)]
