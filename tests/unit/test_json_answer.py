"""Answers go out as orjson writes them: the bytes Starlette's encoder would write."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse

from gateway.json_answer import JSONAnswer


def test_an_answer_is_the_same_compact_utf8_json_the_stdlib_writes() -> None:
    body = {
        "id": "chatcmpl-1",
        "choices": [{"message": {"content": 'héllo \u2028 世界 "q" \\ \n'}, "logprobs": None}],
        "usage": {"prompt_tokens": 3, "cost": 0.125},
    }
    assert JSONAnswer(body).body == JSONResponse(body).body


def test_what_orjson_refuses_the_stdlib_still_writes() -> None:
    huge = {"seed": 2**70}  # beyond 64 bits
    assert json.loads(JSONAnswer(huge).body) == huge
