"""The simulator's OpenAI embeddings refuse what OpenAI refuses of a request's size (2,048
inputs, 8,192 tokens an input, 300,000 tokens a request), with OpenAI's messages and
codes, so the window batcher's limits and its fallbacks can be run against it.  (It counts
four characters a token, never more than the batcher's own estimate: a merged window
never goes over its 300,000 here, as dense text does at OpenAI; see test_batcher.)"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agents.adapters import OpenAIAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import VendorBadRequest

MODEL = "text-embedding-3-small"


async def embed(sim: httpx.AsyncClient, given: Any) -> httpx.Response:
    return await sim.post("/v1/embeddings", json={"model": MODEL, "input": given})


async def test_more_than_2048_inputs_are_refused(sim: httpx.AsyncClient) -> None:
    assert (await embed(sim, ["a"] * 2048)).status_code == 200
    refused = await embed(sim, ["a"] * 2049)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["message"].startswith("'$.input' is invalid")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)


async def test_an_input_over_8192_tokens_is_refused(sim: httpx.AsyncClient) -> None:
    assert (await embed(sim, ["x" * 4 * 8192, "y"])).status_code == 200  # 8,192 tokens
    refused = await embed(sim, ["y", "x" * (4 * 8192 + 1)])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "maximum context length is 8192 tokens" in error["message"]
    assert "8193 tokens" in error["message"]
    assert (error["param"], error["code"]) == (None, None)
    assert (await embed(sim, list(range(8193)))).status_code == 400, "a token list counts too"


async def test_more_than_300k_tokens_in_a_request_is_refused(sim: httpx.AsyncClient) -> None:
    thirty_seven = ["x" * 4 * 8100] * 37  # 299,700 tokens
    assert (await embed(sim, thirty_seven)).status_code == 200
    refused = await embed(sim, [*thirty_seven, "x" * 4 * 400])
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "Requested 300100 tokens, max 300000 tokens per request",
        "type": "max_tokens_per_request",
        "param": None,
        "code": "max_tokens_per_request",
    }


async def test_the_relay_s_adapter_hears_the_per_request_limit_by_its_code(
    sim: httpx.AsyncClient,
) -> None:
    adapter = OpenAIAdapter(VendorConfig(kind="openai", base_url="http://sim/v1"), sim)
    call = VendorCall(MODEL, {"model": MODEL, "input": ["x" * 4 * 8000] * 38}, "k")
    with pytest.raises(VendorBadRequest) as caught:
        await adapter.embed(call)
    assert caught.value.vendor_code == "max_tokens_per_request"
