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
# Turns and every item in the lists inside them (content parts, tool calls, a tool
# result's blocks, a reasoning item's summary...) together.
MAX_ITEMS = 50_000
MAX_TOOLS = 1_024  # OpenAI takes 128 tools, and as many tool calls in one message
MAX_INPUTS = 2_048  # OpenAI's limit on the inputs of one embeddings request; prompts too
MAX_TOKEN_IDS = 1_000_000  # token ids in the token arrays of one request, all together
MAX_STOPS = 1_024  # stop sequences (OpenAI takes 4)
# How deep below a turn's parts blocks are counted.  The translators walk two levels
# below at most (a tool_result's blocks, a document's source blocks in those); deeper lists
# are passed on as they are, never looked at item by item.
_DEPTH = 4


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
    """What is wrong with how many turns (and items inside them) a request holds, said
    after the field's name; None when nothing is.  Costs one look at each turn and each
    item counted, and stops as soon as the count is past ``MAX_ITEMS``: a body past it
    costs no more to refuse than one at it."""
    if not isinstance(turns, list):
        return None  # (the field's own validation says what it should be)
    if len(turns) > MAX_TURNS:
        return f"at most {MAX_TURNS} items in one request, got {len(turns)}"
    if (items := _items(turns, MAX_ITEMS)) > MAX_ITEMS:
        return (
            f"at most {MAX_ITEMS} items (turns, their content parts and tool calls, and the "
            f"blocks inside those) in one request, got at least {items}"
        )
    return None


def _items(turns: list[Any], room: int) -> int:
    """How many ``turns`` there are, and items in the lists inside them (their
    ``content`` parts, ``tool_calls``, a Responses item's ``output`` or a reasoning item's
    ``summary``, and the blocks inside parts: ``_blocks``); past ``room`` the count stops
    there (only a lower bound then).  Allocates nothing per item, and each name is looked
    up as a constant, not looped over: it runs on every chat request."""
    n = len(turns)
    for turn in turns:
        if turn.__class__ is not dict:
            continue
        if (found := turn.get("content")).__class__ is list:
            n += _blocks(found, room - n, _DEPTH)
        if (found := turn.get("tool_calls")).__class__ is list:
            n += len(found)  # (nothing inside a tool call is walked item by item)
        if (found := turn.get("output")).__class__ is list:
            n += _blocks(found, room - n, _DEPTH)
        if (found := turn.get("summary")).__class__ is list:
            n += len(found)
        if n > room:
            break
    return n


def _blocks(blocks: list[Any], room: int, depth: int) -> int:
    """How many ``blocks`` there are, and blocks inside them down to ``depth`` levels:
    a tool result's (or search result's) ``content``, a document's ``source.content``."""
    n = len(blocks)
    if n > room or depth == 0:
        return n
    for block in blocks:
        if block.__class__ is not dict:
            continue
        if (found := block.get("content")).__class__ is list:
            n += _blocks(found, room - n, depth - 1)
        elif (found := block.get("source")).__class__ is dict and (
            found := found.get("content")
        ).__class__ is list:
            n += _blocks(found, room - n, depth - 1)
        else:
            continue
        if n > room:
            break
    return n


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
    "stop_sequences": stops_problem,  # Anthropic's
    "input": inputs_problem,
    "prompt": inputs_problem,
}


def count_refusal(body: dict[str, Any], turns: str | None = "messages") -> BadRequest | None:
    """A 400 naming the first field of ``body`` that holds more items than a request may
    (``turns``: the field of its conversation); None when none does.  For bodies no
    route's model checked as they came: an Anthropic client's, a Responses request's, a
    batch's.

    ``turns=None`` counts only the lists a translation passes on item for item (tools,
    stop sequences, inputs): for a body made from one whose turns were counted as the
    client sent them.  Translating changes how many turns there are (each of an
    Anthropic turn's tool results becomes a chat message of its own), so counting them
    again would refuse a body the client kept within the bounds, with a number it never
    sent."""
    checks = (
        _CHECKS if turns is None else {**_CHECKS, "system": turns_problem, turns: turns_problem}
    )
    for field, problem_of in checks.items():
        if field in body and (problem := problem_of(body[field])):
            return BadRequest(f"{field}: {problem}", param=field)
    return None
