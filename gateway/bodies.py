"""Request bodies the routes read themselves (no pydantic model in the signature), and the
bounds on how many items any request body may hold.

Every item of a body costs the gateway's one event loop time to validate and to key for
the cache, however small it is: a body of 100 000 one-letter messages (3 MB, well within
the size limit) held it for half a second, with every other tenant's requests waiting.
So the lists a request is made of are bounded, far above what clients send, and a body
past a bound is refused before its items are looked at, with a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from schemas.errors import BadRequest

# Turns of a conversation: chat's messages, Anthropic's, a Responses request's input items.
MAX_TURNS = 10_000
# Turns, their content parts and tool calls together.
MAX_ITEMS = 50_000
MAX_TOOLS = 1_024  # OpenAI takes 128 tools, and as many tool calls in one message
MAX_INPUTS = 2_048  # OpenAI's limit on the inputs of one embeddings request; prompts too
MAX_TOKEN_IDS = 1_000_000  # token ids in the token arrays of one request, all together
MAX_STOPS = 1_024  # stop sequences (OpenAI takes 4)
_INNER = ("content", "tool_calls", "output")  # a turn's lists of parts (output: Responses)


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying why it is not one."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def turns_problem(turns: Any) -> str | None:
    """What is wrong with how many turns (and parts and tool calls in them) a request
    holds, said after the field's name; None when nothing is.  Looks at each turn, not
    at its parts: at most ``MAX_TURNS`` of them."""
    if not isinstance(turns, list):
        return None  # (the field's own validation says what it should be)
    if len(turns) > MAX_TURNS:
        return f"at most {MAX_TURNS} items in one request, got {len(turns)}"
    items = len(turns)
    for turn in turns:
        if isinstance(turn, dict):
            for key in _INNER:
                inner = turn.get(key)
                items += len(inner) if isinstance(inner, list) else 0
    if items > MAX_ITEMS:
        return (
            f"at most {MAX_ITEMS} items (turns, their content parts and tool calls) in one "
            f"request, got {items}"
        )
    return None


def tools_problem(tools: Any) -> str | None:
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        return f"at most {MAX_TOOLS} tools in one request, got {len(tools)}"
    return None


def stops_problem(stop: Any) -> str | None:
    if isinstance(stop, list) and len(stop) > MAX_STOPS:
        return f"at most {MAX_STOPS} stop sequences, got {len(stop)}"
    return None


def inputs_problem(inputs: Any) -> str | None:
    """What is wrong with how many inputs (embeddings) or prompts (completions) a request
    holds: texts or token arrays, or one token array."""
    if not isinstance(inputs, list) or not inputs:
        return None
    if not isinstance(inputs[0], list | str):  # one token array
        ids = len(inputs)
    elif len(inputs) > MAX_INPUTS:
        return f"at most {MAX_INPUTS} inputs in one request, got {len(inputs)}"
    else:
        ids = sum(len(item) for item in inputs if isinstance(item, list))
    if ids > MAX_TOKEN_IDS:
        return f"at most {MAX_TOKEN_IDS} token ids in one request, got {ids}"
    return None


_CHECKS = {
    "tools": tools_problem,
    "functions": tools_problem,  # the deprecated spelling of tools
    "stop": stops_problem,
    "input": inputs_problem,
    "prompt": inputs_problem,
}


def count_refusal(body: dict[str, Any], turns: str = "messages") -> BadRequest | None:
    """A 400 naming the first field of ``body`` that holds more items than a request may
    (``turns``: the field of its conversation); None when none does.  For bodies no
    route's model checked as they came: an Anthropic client's, a Responses request's, a
    batch's."""
    checks = {**_CHECKS, "system": turns_problem, turns: turns_problem}  # (Responses: input)
    for field, problem_of in checks.items():
        if field in body and (problem := problem_of(body[field])):
            return BadRequest(f"{field}: {problem}", param=field)
    return None
