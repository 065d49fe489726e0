"""Window batching: embedding calls for one vendor model within a short window go out as
one call with array input, and the answer is split back to each caller.

Chat is never batched this way: a chat completion takes exactly one conversation, so
there is no list to merge into.  Embeddings (and legacy completions with a list prompt)
take many inputs per call, and vendors price them per token, so batching costs nothing
extra while saving requests against the vendor's RPM limit and per-call latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.adapters.base import VendorCall, VendorResult
from schemas.errors import RelayError, VendorError
from schemas.usage import Usage

EmbedFn = Callable[[VendorCall], Awaitable[VendorResult]]


@dataclass
class _Pending:
    call: VendorCall
    inputs: list[Any]
    future: asyncio.Future[VendorResult] = field(default_factory=asyncio.Future)


@dataclass
class _Window:
    pending: list[_Pending] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class EmbeddingBatcher:
    """Collects calls per key (vendor, model, params) and flushes on size or age."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, ...], _Window] = {}
        self.calls_sent = 0

    async def embed(
        self, key: tuple[str, ...], call: VendorCall, send: EmbedFn, window_ms: int, max_size: int
    ) -> tuple[VendorResult, bool]:
        """The caller's own embeddings, and whether they shared a vendor call."""
        raw = call.body.get("input")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        window = self._windows.setdefault(key, _Window())
        pending = _Pending(call, inputs)
        window.pending.append(pending)
        window.size += len(inputs)
        if window.size >= max_size:
            self._flush(key, send)
        elif window.timer is None:
            loop = asyncio.get_running_loop()
            window.timer = loop.call_later(window_ms / 1000, self._flush, key, send)
        result = await pending.future
        return result, bool(result.body.get("_shared"))

    def _flush(self, key: tuple[str, ...], send: EmbedFn) -> None:
        window = self._windows.pop(key, None)
        if window is None or not window.pending:
            return
        if window.timer is not None:
            window.timer.cancel()
        asyncio.get_running_loop().create_task(self._send(window.pending, send))

    async def _send(self, batch: list[_Pending], send: EmbedFn) -> None:
        first = batch[0].call
        merged = [item for p in batch for item in p.inputs]
        call = VendorCall(
            model=first.model,
            body={**first.body, "input": merged},
            api_key=first.api_key,
            timeout_s=min(p.call.timeout_s for p in batch),
        )
        self.calls_sent += 1
        try:
            result = await send(call)
        except RelayError as err:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(type(err)(err.message, retry_after=err.retry_after))
            return
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(VendorError(f"batched call failed: {exc}"))
            return
        for p, part in zip(batch, split(result, [len(p.inputs) for p in batch]), strict=True):
            if not p.future.done():
                if len(batch) > 1:
                    part.body["_shared"] = True
                p.future.set_result(part)


def split(result: VendorResult, sizes: list[int]) -> list[VendorResult]:
    """Cut an embeddings answer back into per-caller answers; tokens split by share."""
    data = sorted(result.body.get("data", []), key=lambda d: d.get("index", 0))
    total = max(1, sum(sizes))
    out, start = [], 0
    tokens_left = result.usage.input_tokens
    for n, size in enumerate(sizes):
        part = [{**d, "index": i} for i, d in enumerate(data[start : start + size])]
        start += size
        tokens = tokens_left if n == len(sizes) - 1 else result.usage.input_tokens * size // total
        tokens_left -= tokens
        body = {**result.body, "data": part}
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        out.append(VendorResult(body, Usage(input_tokens=tokens)))
    return out
