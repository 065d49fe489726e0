"""OpenAI's deprecated function calling (``functions`` / ``function_call``) as tools.

Older clients (and frameworks pinned to them) still send ``functions`` and read
``message.function_call``.  The relay speaks tools to every vendor, so such a request is
turned into tools on the way in and its answer back into a function call on the way out:
an Anthropic or Ollama vendor serves it as OpenAI itself would.  Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import BadRequest
from schemas.formats.openai import ToolCallIndexes, call_function

FINISH = {"tool_calls": "function_call"}


def is_legacy(body: dict[str, Any]) -> bool:
    """Whether ``body`` asks in the deprecated form (and not in tools as well)."""
    return body.get("functions") is not None and not body.get("tools")


def functions_to_tools(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` in tools: ``functions`` as tools, ``function_call`` as ``tool_choice``, one
    call at a time (unless the client said otherwise), and the history's function calls
    and results as tool calls and tool results, each pair joined by an id made from the
    call's place in the conversation."""
    if not is_legacy(body):
        return body
    functions = body["functions"]
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise BadRequest("functions: must be a list of function objects", param="functions")
    for i, function in enumerate(functions):
        if not isinstance(function.get("name"), str) or not function["name"]:
            where = f"functions.{i}.name"
            raise BadRequest(f"{where}: must be a non-empty string", param=where)
    out = {k: v for k, v in body.items() if k not in ("functions", "function_call")}
    out["tools"] = [{"type": "function", "function": f} for f in functions]
    choice = body.get("function_call")
    if choice in ("none", "auto"):
        out["tool_choice"] = choice
    elif isinstance(choice, dict) and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        raise BadRequest(
            'function_call: must be "none", "auto" or {"name": ...}', param="function_call"
        )
    if out["tools"] and choice != "none" and body.get("parallel_tool_calls") is None:
        # The deprecated answer holds one call (``message.function_call``): a model left
        # to call several at once would have the others, billed, dropped from the answer
        # and so from the history the client sends back.  One at a time, as the old API
        # answered (Anthropic's ``disable_parallel_tool_use``; Ollama has no such knob).
        out["parallel_tool_calls"] = False
    out["messages"] = _history(body.get("messages") or [])
    return out


def _history(messages: list[Any]) -> list[Any]:
    calls: dict[str, str] = {}  # function name -> id of its latest call
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            out.append(message)
            continue
        call = message.get("function_call")
        if message.get("role") == "assistant" and isinstance(call, dict):
            call_id = f"call_fn_{i}"
            calls[str(call.get("name", ""))] = call_id
            fn = {"name": call.get("name", ""), "arguments": call.get("arguments") or "{}"}
            message = {k: v for k, v in message.items() if k != "function_call"}
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": fn}]
        elif message.get("role") == "function":
            name = str(message.get("name", ""))
            call_id = calls.get(name, f"call_fn_{name}")
            message = {"role": "tool", "tool_call_id": call_id, "content": message.get("content")}
        out.append(message)
    return out


def answer_as_function_call(body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion with its (first) tool call as the message's ``function_call``."""
    choices = []
    for choice in body.get("choices") or []:
        message = dict(choice.get("message") or {})
        calls = message.pop("tool_calls", None) or []
        if calls:
            fn = call_function(calls[0])  # a custom tool's input as the arguments
            message["function_call"] = {
                "name": fn.get("name", ""),
                "arguments": fn.get("arguments", ""),
            }
        reason = choice.get("finish_reason")
        choices.append({**choice, "message": message, "finish_reason": FINISH.get(reason, reason)})
    return {**body, "choices": choices}


def chunk_as_function_call(
    chunk: dict[str, Any], numbering: dict[int, ToolCallIndexes] | None = None
) -> dict[str, Any]:
    """A stream chunk with its first tool call's deltas as ``function_call`` deltas.

    The first call is the one ``ToolCallIndexes`` numbers 0, not every fragment at index
    0: a server that gives each parallel call index 0 (Ollama's /v1) would have them
    joined into one function call.  ``numbering`` is the stream's, one per choice, kept
    across its chunks (pass the same dict for each); without it a fragment's call is its
    own ``index``, as the relay's streams number them (its adapters', a cache replay's)."""
    choices = []
    for choice in chunk.get("choices") or []:
        delta = dict(choice.get("delta") or {})
        calls = [c for c in delta.pop("tool_calls", None) or [] if isinstance(c, dict)]
        if numbering is None:
            first = [c for c in calls if c.get("index", 0) == 0]
        else:
            at = choice.get("index")
            indexes = numbering.setdefault(at if isinstance(at, int) else 0, ToolCallIndexes())
            first = [c for c in calls if indexes.of(c) == 0]  # (each fragment numbered)
        if first:
            fn = call_function(first[0])
            delta["function_call"] = {k: fn[k] for k in ("name", "arguments") if k in fn}
        reason = choice.get("finish_reason")
        choices.append({**choice, "delta": delta, "finish_reason": FINISH.get(reason, reason)})
    return {**chunk, "choices": choices}
