"""The official SDKs pointed at a test relay."""

from __future__ import annotations

import openai

from tests.support.stack import DEMO_KEY, Stack


def relay_openai(stack: Stack, trace: str | None = None) -> openai.AsyncOpenAI:
    """The openai SDK on the relay with the demo key, the cache bypassed (each call is the
    vendor's answer) and, given one, a trace id to find its ledger line by."""
    headers = {"x-relay-cache": "bypass"}
    if trace:
        headers["x-relay-trace-id"] = trace
    return openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key=DEMO_KEY, default_headers=headers, max_retries=0
    )
