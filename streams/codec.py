"""JSON on the wire: orjson encoding of the schema models, never pickle."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))


def decode(cls: type[M], raw: bytes | str) -> M:
    return cls.model_validate_json(raw)
