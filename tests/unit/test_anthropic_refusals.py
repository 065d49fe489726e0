"""What an Anthropic client asks that the relay cannot carry whole is refused, never run
without it or broken: server-side compaction (a 400 naming the edit); its own thinking in
a tool loop another vendor kind answered, and a prefill, at a candidate that cannot take
them (``VendorUnsupported``: the next candidate serves it, or the client hears why)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agents.adapters import AnthropicAdapter, VendorCall
from schemas.config import VendorConfig
from schemas.errors import BadRequest, VendorUnsupported
from schemas.formats.anthropic import (
    PREFILL,
    messages_request_to_openai,
    openai_request_to_messages,
    without_cache_control,
)


def ask(messages: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A Messages request as an Anthropic client sends it."""
    messages = messages or [{"role": "user", "content": "hi"}]
    return {"model": "claude-alias", "max_tokens": 8000, "messages": messages, **extra}


# -- compaction ------------------------------------------------------------------------


def test_compaction_is_refused_naming_the_edit() -> None:
    managed = {"edits": [{"type": "clear_tool_uses_20250919"}, {"type": "compact_20260112"}]}
    with pytest.raises(BadRequest) as err:
        messages_request_to_openai(ask(context_management=managed))
    assert err.value.param == "context_management.edits.1.type"
    assert err.value.message.startswith("context_management.edits.1.type: ")
    assert "compact_20260112" in err.value.message


def test_edits_that_only_clear_context_still_reach_anthropic() -> None:
    managed = {"edits": [{"type": "clear_tool_uses_20250919"}, {"type": "clear_thinking_20251015"}]}
    neutral = messages_request_to_openai(ask(context_management=managed))
    assert openai_request_to_messages(neutral, "c")["context_management"] == managed


def test_compaction_a_body_carries_itself_never_reaches_anthropic() -> None:
    """An OpenAI client's body may carry the extension too."""
    body = {
        "model": "a",
        "messages": [{"role": "user", "content": "hi"}],
        "context_management": {"edits": [{"type": "compact_20260112"}]},
    }
    with pytest.raises(BadRequest, match=r"context_management\.edits\.0\.type"):
        openai_request_to_messages(body, "c")


# -- the client's thinking in a tool loop another vendor kind answered -----------------

BASH = {"name": "Bash", "input_schema": {"type": "object"}}
CALL = {"type": "tool_use", "id": "call_abc", "name": "Bash", "input": {}}
RESULT = {
    "role": "user",
    "content": [{"type": "tool_result", "tool_use_id": "call_abc", "content": "a.txt"}],
}


def tool_loop(turn: list[dict[str, Any]], thinking: dict[str, Any]) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": turn},
        RESULT,
    ]
    return messages_request_to_openai(ask(messages, thinking=thinking, tools=[BASH]))


def test_thinking_on_after_an_unsigned_tool_call_is_for_another_candidate() -> None:
    """The OpenAI-format candidate that made the turn (a fallback, a mixed alias) may
    serve it; Anthropic would refuse it, final, and the client could do nothing."""
    neutral = tool_loop([CALL], {"type": "enabled", "budget_tokens": 2000})
    with pytest.raises(VendorUnsupported) as err:
        openai_request_to_messages(neutral, "c")
    assert err.value.retryable and err.value.param == "thinking"
    assert "signed thinking block" in err.value.message
    # The OpenAI-format candidate takes it (the thinking as an effort).
    assert without_cache_control(neutral)["reasoning_effort"] == "low"


def test_a_signed_tool_turn_and_adaptive_thinking_still_reach_anthropic() -> None:
    signed = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    enabled = {"type": "enabled", "budget_tokens": 2000}
    sent = openai_request_to_messages(tool_loop([signed, CALL], enabled), "c")
    assert sent["thinking"] == enabled and sent["messages"][1]["content"][0] == signed
    # Adaptive thinking may skip thinking before a call of Claude's own: no fault there.
    sent = openai_request_to_messages(tool_loop([CALL], {"type": "adaptive"}), "c")
    assert sent["thinking"] == {"type": "adaptive"}


async def test_the_simulated_anthropic_is_never_sent_the_unsigned_turn(
    sim: httpx.AsyncClient,
) -> None:
    config = VendorConfig(kind="anthropic", base_url="http://sim", api_key_env="X")
    adapter = AnthropicAdapter(config, sim)
    neutral = tool_loop([CALL], {"type": "enabled", "budget_tokens": 2000})
    with pytest.raises(VendorUnsupported):
        await adapter.chat(VendorCall(model="claude-haiku-4-5", body=neutral, api_key="k"))
    assert (await sim.get("/stats")).json()["total"] == 0


# -- prefill ---------------------------------------------------------------------------

PREFILLED = [{"role": "user", "content": "JSON please"}, {"role": "assistant", "content": "{"}]


def test_a_prefill_is_for_a_vendor_that_continues_it() -> None:
    neutral = messages_request_to_openai(ask(PREFILLED))
    assert neutral["messages"][-1] == {"role": "assistant", "content": "{", PREFILL: True}
    # An OpenAI-format vendor answers a new turn after it: the client would join "{" to
    # a whole JSON answer.  It says so, and a candidate that continues it serves it.
    with pytest.raises(VendorUnsupported, match="prefilled assistant turn") as err:
        without_cache_control(neutral, continues_prefill=False)
    assert err.value.retryable and err.value.param == "messages"
    # One that continues it (Ollama) gets the turn, without the marker.
    assert without_cache_control(neutral)["messages"][-1] == {"role": "assistant", "content": "{"}
    # ...and so does Anthropic.
    sent = openai_request_to_messages(neutral, "c")
    assert sent["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "{"}]}


def test_an_assistant_turn_before_the_last_is_no_prefill() -> None:
    neutral = messages_request_to_openai(ask([*PREFILLED, {"role": "user", "content": "go"}]))
    assert not any(PREFILL in m for m in neutral["messages"])
    assert without_cache_control(neutral, continues_prefill=False)["messages"][1]["content"] == "{"
