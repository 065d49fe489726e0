"""Request envelopes for unit tests: valid by default, any field overridden."""

from __future__ import annotations

import time
import uuid
from typing import Any

from schemas.envelope import RequestEnvelope


def request_envelope(**fields: Any) -> RequestEnvelope:
    defaults: dict[str, Any] = {
        "correlation_id": uuid.uuid4().hex,
        "reply_to": "replies.gw",
        "tenant": "t",
        "key_id": "key",
        "alias": "m",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "prompt_hash": uuid.uuid4().hex,
        "deadline_ms": int((time.time() + 5) * 1000),
        "trace_id": uuid.uuid4().hex,
    }
    return RequestEnvelope(**{**defaults, **fields})
