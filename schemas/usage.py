"""Token usage in one vendor-neutral shape, whatever the vendor reported."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator


def estimated_tokens(chars: int) -> int:
    """About four characters a token (one at least): the relay's count where a vendor
    gives none yet (a TPM limit's guess) or none at all (a stream cut short)."""
    return chars // 4 + 1


# An image in a prompt, whatever its encoding's size: about what Anthropic counts for a
# large one (~1,600 tokens; OpenAI's high detail is in the same range), as characters.
IMAGE_CHARS = 1600 * 4
_IMAGES = frozenset({"image_url", "image", "input_image"})


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of a request's prompt, whichever field holds it, the structure's own
    text included; an image counts as ``IMAGE_CHARS``, not as its base64 (a 30 KB
    picture would otherwise weigh 10 000 tokens)."""
    return _chars(body.get("messages") or body.get("input") or body.get("prompt") or "")


def _chars(item: Any) -> int:
    if isinstance(item, str):
        return len(item)
    if isinstance(item, dict):
        kind = item.get("type")
        if isinstance(kind, str) and kind in _IMAGES:
            return IMAGE_CHARS
        return sum(len(str(k)) + 4 + _chars(v) for k, v in item.items())
    if isinstance(item, list):
        return sum(_chars(x) + 2 for x in item)
    return len(str(item))


class Usage(BaseModel):
    """Tokens as the vendor counted them.

    ``input_tokens`` counts every prompt token, including the cached ones, so that
    ``input_tokens - cache_read_tokens - cache_write_tokens`` is the uncached part.
    ``reasoning_tokens`` are the part of ``output_tokens`` a reasoning model spent
    thinking, when the vendor says (OpenAI does; Anthropic counts thinking as output).
    ``cache_write_1h_tokens`` are the part of ``cache_write_tokens`` written to a one-hour
    cache (Anthropic's ``ttl: "1h"``), which costs more than the default five minutes.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0

    @field_validator("*")
    @classmethod
    def _none_below_zero(cls, tokens: int) -> int:
        # A vendor's count as it says it, but never negative (a server that reports -100
        # completion tokens would make a negative cost, which no counter or budget takes).
        return max(0, tokens)

    @classmethod
    def estimated(cls, body: dict[str, Any], answer_chars: int) -> Usage:
        """What a call used, estimated, when the vendor did not say: the request's
        ``body`` and ``answer_chars`` characters of answer."""
        return cls(
            input_tokens=estimated_tokens(prompt_chars(body)),
            output_tokens=estimated_tokens(answer_chars),
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_openai(self) -> dict[str, object]:
        usage: dict[str, object] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage

    @classmethod
    def from_openai(cls, usage: dict[str, object] | None) -> Usage:
        if not usage:
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
        out_details = usage.get("completion_tokens_details") or {}
        reasoning = out_details.get("reasoning_tokens", 0) if isinstance(out_details, dict) else 0
        return cls(
            input_tokens=int(usage.get("prompt_tokens", 0) or 0),  # type: ignore[call-overload]
            output_tokens=int(usage.get("completion_tokens", 0) or 0),  # type: ignore[call-overload]
            cache_read_tokens=int(cached or 0),
            reasoning_tokens=int(reasoning or 0),
        )
