"""Request bodies the routes read themselves (no pydantic model in the signature)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from schemas.errors import BadRequest


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying why it is not one."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body
