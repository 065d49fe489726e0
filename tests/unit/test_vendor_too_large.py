"""A vendor's 413: too large for that vendor, so the next candidate is tried (its limit
may be larger) with the first one's health untouched; last of all the client hears a
413, which Anthropic's SDK raises as its own error rather than a plain 400."""

from __future__ import annotations

import time

import httpx

from gateway.errors import anthropic_error
from schemas.config import Candidate
from schemas.errors import VendorRequestTooLarge
from tests.support.envelopes import request_envelope
from tests.unit.test_dispatch import real_vendors

TOO_LARGE = httpx.Response(
    413,
    json={
        "type": "error",
        "error": {"type": "request_too_large", "message": "Request exceeds the maximum size"},
    },
)
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
PLAN = [Candidate(vendor="anthropic", model="claude"), Candidate(vendor="backup", model="m")]


def soon() -> int:
    return int((time.time() + 5) * 1000)


async def test_a_request_too_large_for_one_vendor_goes_to_the_next() -> None:
    dispatch, seen = real_vendors(anthropic=TOO_LARGE, backup=httpx.Response(200, json=ANSWER))
    out = await dispatch.run(request_envelope(deadline_ms=soon()), PLAN, None)
    assert out.error is None and out.candidate == PLAN[1]
    assert (seen[0].vendor, seen[0].error_code) == ("anthropic", VendorRequestTooLarge.code)


async def test_with_nobody_else_the_client_hears_413_request_too_large() -> None:
    dispatch, _ = real_vendors(anthropic=TOO_LARGE)
    out = await dispatch.run(request_envelope(deadline_ms=soon()), PLAN[:1], None)
    assert isinstance(out.error, VendorRequestTooLarge) and out.error.status == 413
    status, body = anthropic_error(out.error)
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert out.error.openai_body()["error"]["type"] == "invalid_request_error"
