"""JSON on the wire: orjson encoding of the schema models, never pickle."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))


def decode(cls: type[M], raw: bytes | str) -> M:
    """``raw`` as ``cls``.  Pydantic's own JSON parser stops nesting at ~200 levels where
    orjson (which encoded it, and which the gateway checks bodies with) goes to ~254: a
    message it refuses for that alone is read again with orjson."""
    try:
        return cls.model_validate_json(raw)
    except ValidationError as exc:
        if not any(e["type"] == "json_invalid" for e in exc.errors()):
            raise
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise exc from None
        return cls.model_validate(data)
