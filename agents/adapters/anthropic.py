"""The Anthropic adapter: Messages API chat, streaming, message batches and token counting.

All format work lives in ``schemas.formats.anthropic``; this module only moves bytes and
turns Anthropic's errors (HTTP statuses, ``error`` stream events, errored batch results)
into the relay's error tree.  Anthropic has no embeddings endpoint.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agents.adapters.base import StreamItem, VendorCall, VendorResult, batch_lines
from agents.adapters.http import (
    batch_result,
    in_doubt,
    json_body,
    jsonl_objects,
    open_stream,
    refused,
    scrubbed,
    send,
    sse_events,
)
from schemas.config import VendorConfig
from schemas.errors import (
    RelayError,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorNotFound,
    VendorOverloaded,
    VendorRateLimited,
    VendorRequestTooLarge,
    VendorUnavailable,
)
from schemas.formats.anthropic import (
    MessageEventsToChunks,
    messages_response_to_openai,
    offers_json_answer,
    openai_request_to_messages,
)
from schemas.usage import Usage

DEFAULT_API_VERSION = "2023-06-01"
# The fields /v1/messages/count_tokens accepts; it refuses the rest (max_tokens...).
_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
# Anthropic's error ``type`` -> our class, for errors that arrive inside a 200.
_ERROR_TYPES: dict[str, type[RelayError]] = {
    "invalid_request_error": VendorBadRequest,
    "not_found_error": VendorNotFound,
    "request_too_large": VendorRequestTooLarge,
    "authentication_error": VendorAuthFailed,
    "permission_error": VendorAuthFailed,
    "billing_error": VendorAuthFailed,
    "rate_limit_error": VendorRateLimited,
    "overloaded_error": VendorOverloaded,
}


def anthropic_error(error: dict[str, Any]) -> RelayError:
    """The error-tree exception for an Anthropic error object ``{"type", "message"}``;
    overloaded, api and unknown errors are worth retrying elsewhere."""
    kind = str(error.get("type", "api_error"))
    cls = _ERROR_TYPES.get(kind, VendorUnavailable)
    return cls(f"anthropic: {kind}: {error.get('message', '')}")


def _not_an_error(body: Any, api_key: str) -> dict[str, Any]:
    """``body``, an object that is not Anthropic's error body.  An Anthropic-compatible
    gateway (or a proxy in front of Anthropic) may answer an upstream failure with that
    body and a 200: it is classified as the same error in a stream's ``error`` event
    would be, with the key struck out should the vendor have echoed it."""
    if not isinstance(body, dict):
        raise VendorUnavailable("anthropic: HTTP 200 with an answer that is not an object")
    if body.get("type") == "error":
        error = body.get("error")
        raise scrubbed(anthropic_error(error if isinstance(error, dict) else {}), api_key)
    return body


def _message(body: Any, api_key: str) -> dict[str, Any]:
    """``body``, if it is a Message.  Read as one, any other body (an error, a proxy's own
    ``{"error": ...}``) would be an empty answer, metered as free, reported healthy and
    cached to be served again, so it is the vendor's failure instead.  ``type`` may be
    left out (a compatible server may skip it), but never be something else."""
    body = _not_an_error(body, api_key)
    if not _is_message(body):
        error = body.get("error")
        said = error.get("message") if isinstance(error, dict) else error
        detail = f": {str(said)[:500]}" if said else ""
        raise scrubbed(VendorUnavailable(f"anthropic: HTTP 200 without a message{detail}"), api_key)
    return body


def _is_message(body: Any) -> bool:
    """Whether ``body`` is a Message: an object whose ``type`` says so (a compatible
    server may leave it out, never give another) holding a list of content blocks."""
    return (
        isinstance(body, dict)
        and body.get("type", "message") == "message"
        and isinstance(body.get("content"), list)
    )


class AnthropicAdapter:
    """Chat, stream, batch and count tokens against ``{base_url}/v1/messages``."""

    kind = "anthropic"

    def __init__(self, config: VendorConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        # Tolerate a base URL given with its /v1, as the OpenAI habit suggests.
        self.base = config.base_url.rstrip("/").removesuffix("/v1")
        self.messages_url = httpx.URL(f"{self.base}/v1/messages")  # parsed once, not per call

    def headers(self, api_key: str, body: dict[str, Any] | None = None) -> dict[str, str]:
        """Auth and API version headers, and the beta features the client asked for (the
        neutral body's ``anthropic_beta``, from its ``anthropic-beta`` header)."""
        version = self.config.api_version or DEFAULT_API_VERSION
        headers = {"x-api-key": api_key, "anthropic-version": version}
        if betas := (body or {}).get("anthropic_beta"):
            headers["anthropic-beta"] = ",".join(betas)
        return headers

    async def chat(self, call: VendorCall) -> VendorResult:
        """One Message, answered as a ``chat.completion``."""
        body = openai_request_to_messages(call.body, call.model)
        resp = await self._send(
            "POST", "messages", call.api_key, call.timeout_s, json=body, asked=call.body
        )
        message = _message(json_body(resp, self.kind), call.api_key)
        answer, usage = messages_response_to_openai(message)
        return VendorResult(answer, usage)

    async def stream(self, call: VendorCall) -> AsyncIterator[StreamItem]:
        """Anthropic's stream events as OpenAI chunks, then one ``Usage``."""
        body = {**openai_request_to_messages(call.body, call.model), "stream": True}
        convert = MessageEventsToChunks(json_answer=offers_json_answer(body))
        async with open_stream(
            self.client,
            "POST",
            self.messages_url,
            vendor=self.kind,
            json=body,
            headers=self.headers(call.api_key, call.body),
            timeout=call.timeout_s,
        ) as resp:
            async for event, raw in sse_events(resp):
                try:
                    data = json.loads(raw)
                except ValueError:
                    raise VendorUnavailable("anthropic: stream event is not JSON") from None
                if event == "error" or data.get("type") == "error":
                    raise refused(anthropic_error(data.get("error") or {}))
                for item in convert.feed(event, data):
                    yield item
                    if isinstance(item, Usage):
                        # message_stop: the answer is whole.  Ended here, not at the
                        # connection's close, which a keep-alive proxy may hold off until
                        # the read times out (a whole answer then reported as failed).
                        return
        raise VendorUnavailable("anthropic: stream ended before message_stop")

    async def count_tokens(self, call: VendorCall) -> int:
        """Input tokens the request would use, without running it."""
        body = openai_request_to_messages(call.body, call.model)
        body = {k: v for k, v in body.items() if k in _COUNT_FIELDS}
        resp = await self._send(
            "POST",
            "messages/count_tokens",
            call.api_key,
            call.timeout_s,
            json=body,
            asked=call.body,
        )
        counted = _not_an_error(json_body(resp, self.kind), call.api_key).get("input_tokens")
        if not isinstance(counted, int) or isinstance(counted, bool):
            raise VendorUnavailable("anthropic: HTTP 200 without input_tokens")
        return counted

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        """Start a message batch; returns its id.

        Creating one is not idempotent, and a message batch carries nothing of the
        relay's to find it by afterwards: a create call that went out and failed without
        a clear answer (the connection dropped, it timed out, a 5xx, a 200 nobody can
        read) may have made the batch all the same, to run and bill, so it is
        ``VendorAnswerUnreadable`` and its requests are never sent again.  A call that
        never went out (no connection), and a refusal (a 4xx, a 429, a 503 or 529
        overloaded), stand as they are.  Calls Anthropic cannot take (a stop sequence of
        whitespace alone) are ``CallsRefused`` before anything is sent."""
        requests = batch_lines(calls, _batch_request)
        # The lane batches requests asking the same betas together: one header for all.
        asked = calls[0][1].body if calls else None
        try:
            resp = await self._send(
                "POST",
                "messages/batches",
                api_key,
                self.config.api_timeout_s,
                asked,
                json={"requests": requests},
            )
            batch = json_body(resp, self.kind)
            found = batch.get("id") if isinstance(batch, dict) else None
            if not isinstance(found, str) or not found:
                raise VendorUnavailable(
                    "anthropic: the batch was created with an answer without its id"
                )
        except VendorUnavailable as err:
            if not in_doubt(err):  # (not sent, or turned away: overloaded)
                raise
            raise VendorAnswerUnreadable(
                f"anthropic: the message batch's create call failed ({err.message}), and "
                "Anthropic may have made it all the same: the vendor may run it, so its "
                "requests are not sent again"
            ) from None
        return found

    async def poll_batch(
        self, batch_id: str, api_key: str
    ) -> dict[str, VendorResult | Exception] | None:
        """None while the batch runs; then every request's result or error by custom_id."""
        timeout = self.config.api_timeout_s
        resp = await self._send("GET", f"messages/batches/{batch_id}", api_key, timeout)
        batch = json_body(resp, self.kind)
        if batch.get("processing_status") != "ended":
            return None
        # The documented results path rather than the answer's results_url: the key
        # only ever goes to the host this vendor is configured with.
        resp = await self._send("GET", f"messages/batches/{batch_id}/results", api_key, timeout)
        results: dict[str, VendorResult | Exception] = {}
        for entry in jsonl_objects(resp.text, self.kind):
            results[str(entry.get("custom_id"))] = batch_result(self.kind, _batch_entry, entry)
        return results

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        """Ask the vendor to stop a message batch; the requests it had not run yet end
        ``canceled``."""
        timeout = self.config.api_timeout_s
        await self._send("POST", f"messages/batches/{batch_id}/cancel", api_key, timeout)

    async def clean_batch(self, batch_id: str, api_key: str) -> None:
        """Delete an ended message batch, its results with it (they are kept 29 days
        otherwise)."""
        timeout = self.config.api_timeout_s
        await self._send("DELETE", f"messages/batches/{batch_id}", api_key, timeout)

    async def _send(
        self,
        method: str,
        path: str,
        api_key: str,
        timeout_s: float,
        asked: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request to the vendor; ``asked``, the neutral body, may ask for betas."""
        return await send(
            self.client,
            method,
            self.messages_url if path == "messages" else f"{self.base}/v1/{path}",
            vendor=self.kind,
            headers=self.headers(api_key, asked),
            timeout=timeout_s,
            **kwargs,
        )


def _batch_request(custom_id: str, call: VendorCall) -> dict[str, Any]:
    """One request of a message batch."""
    return {"custom_id": custom_id, "params": openai_request_to_messages(call.body, call.model)}


def _batch_entry(entry: dict[str, Any]) -> VendorResult | Exception:
    """One line of a batch's results (``batch_result`` takes a line in a shape this cannot
    read, a count that is not a number, say)."""
    result = entry["result"]
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        if not _is_message(message):  # run, and billed: never sent again
            return VendorAnswerUnreadable("anthropic: a succeeded batch request without a message")
        answer, usage = messages_response_to_openai(message)
        return VendorResult(answer, usage)
    if kind == "errored":
        # ``error`` is an error response: {"type": "error", "error": {...}}.
        return anthropic_error(result["error"].get("error") or {})
    if kind in ("canceled", "expired"):  # never run, so another route may still answer it
        return VendorUnavailable(f"anthropic: batch request {kind}")
    # A result of no kind Anthropic lists: nothing says it was not run (and billed).
    return VendorAnswerUnreadable(f"anthropic: a batch result of an unknown type ({kind})")
