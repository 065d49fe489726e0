"""The OpenAI adapter: chat, streaming, embeddings, legacy completions and the batch API.

The relay's neutral shape *is* OpenAI's, so this adapter mostly forwards bodies.  It
also serves anything OpenAI-compatible (Ollama's /v1, vLLM...), and ``azure.py`` reuses
it by overriding only where URLs and auth differ.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, AsyncExitStack, nullcontext
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import httpx

from agents.adapters.base import SHAPE_ERRORS, StreamItem, VendorCall, VendorResult, batch_lines
from agents.adapters.http import (
    batch_result,
    blames,
    classified,
    in_doubt,
    json_body,
    jsonl_objects,
    knobs_struck,
    model_limits,
    open_stream,
    refused,
    scrubbed,
    send,
    sse_events,
)
from schemas.batches import ENDED
from schemas.config import VendorConfig, openai_itself
from schemas.errors import (
    ContentFiltered,
    RelayError,
    VendorAnswerUnreadable,
    VendorBadRequest,
    VendorRateLimited,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.formats.anthropic import without_cache_control
from schemas.formats.openai import ToolCallIndexes, answer_chars, vendor_fields
from schemas.usage import Usage

# Models that take ``max_completion_tokens`` only: o1, o3, o4-mini…, gpt-5…
# OpenAI's reasoning models, also behind a gateway's ``provider/`` prefix (GitHub Models'
# ``openai/o4-mini``) or fine-tuned (``ft:o4-mini-…``).
_REASONING = re.compile(r"^(?:ft:)?(?:[\w.-]+/)?(?:o\d|gpt-5)")
# Azure's hosts, reached as ``kind: openai`` too (its v1 API, which Microsoft documents for
# the plain OpenAI client): they take max_completion_tokens for every deployment.
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
# Models that refuse ``parallel_tool_calls``, true or false (a 400 unsupported_parameter):
# o1, o3-mini, o3, o4-mini… (gpt-5 takes it).
_NO_PARALLEL_KNOB = re.compile(r"^o\d")
# The longest ``user`` OpenAI takes (a longer one is a 400 string_above_max_length).
MAX_USER = 64
# The most stop sequences OpenAI and Azure take (Anthropic takes more).
MAX_STOPS = 4
MAX_KEPT_URLS = 1024  # parsed model-call URLs an adapter keeps
# The lane's tag on each vendor batch it makes (in the batch's ``metadata``): a create call
# that failed without a clear answer is settled by looking for it.
NONCE_KEY = "relay_lane_nonce"
LOOKUP_PAGES = 5  # pages of 100 batches looked through for one
LOOKUP_SKEW_S = 600.0  # how far behind the relay's clock the vendor's may run
# Pauses before each look (a create still on its way at the vendor lands meanwhile): the
# batch must be absent every time for its requests to go on the realtime way.
LOOKUP_WAITS_S = (2.0, 10.0)
log = logging.getLogger("relay.worker")


class OpenAIAdapter:
    """Chat, stream, embed, complete and batch against an OpenAI-style ``/v1`` base URL."""

    kind = "openai"
    batch_endpoint = "/v1/chat/completions"  # the ``url`` of each batch line
    lookup_waits_s: tuple[float, ...] = LOOKUP_WAITS_S

    def __init__(self, config: VendorConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.base = config.base_url.rstrip("/")
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    # -- where and how to call: the two things Azure changes --------------------------

    def url(self, path: str, model: str | None = None) -> str:
        """The URL of an API path such as ``chat/completions`` (``model`` is Azure's)."""
        return f"{self.base}/{path}"

    def model_url(self, path: str, model: str) -> httpx.URL:
        """``url`` for a model call, parsed once (httpx would parse the string again on
        every call).  Kept per configured model, so bounded by the config."""
        key = (path, model)
        found = self._urls.get(key)
        if found is None:
            if len(self._urls) >= MAX_KEPT_URLS:
                self._urls.clear()
            found = self._urls[key] = httpx.URL(self.url(path, model))
        return found

    def headers(self, api_key: str) -> dict[str, str]:
        """Auth headers; a keyless local server (Ollama) gets none."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _knows_new_limit(self) -> bool:
        """Whether the server takes ``max_completion_tokens`` for any model: OpenAI's own,
        or Azure's (a deployment's name says nothing of its model)."""
        return self._openai_or_azure_host

    @cached_property
    def _openai_or_azure_host(self) -> bool:
        host = urlsplit(self.base).hostname or ""
        return openai_itself(self.base) or host.endswith(_AZURE_HOSTS)

    def _model_limits(self) -> AbstractContextManager[None]:
        """A local model's refusal of what it lacks as ``VendorUnsupported``, so the next
        candidate is tried (``model_limits``: Ollama's /v1 says "does not support tools",
        as its native API does), from any server but OpenAI's own and Azure, whose 400s
        stay the client's."""
        return nullcontext() if self._knows_new_limit() else model_limits()

    # -- the capabilities ---------------------------------------------------------------

    async def chat(self, call: VendorCall) -> VendorResult:
        """One non-streamed chat completion."""
        body = self._body(call)
        with self._model_limits():
            data = await knobs_struck(
                lambda: self._post("chat/completions", call, body), body, call.body, _KNOBS
            )
        data = self._answer(data, call)
        return VendorResult(data, _usage(data, call))

    async def stream(self, call: VendorCall) -> AsyncIterator[StreamItem]:
        """The vendor's chunks as it sends them, then one ``Usage``.

        ``include_usage`` makes the vendor end with a choices-less usage chunk; that one
        becomes the ``Usage`` rather than being passed on.  Tool calls are numbered as
        OpenAI numbers them (``_number_calls``).
        """
        body = {**self._body(call), "stream": True, "stream_options": {"include_usage": True}}
        usage = Usage()
        done, written = False, 0  # [DONE] seen; characters of answer streamed
        numbering: dict[int, _StreamCalls] = {}  # per choice, for the whole stream
        held: dict[str, Any] = {}  # the own fields of chunks left out, for the next one

        async with AsyncExitStack() as stack:

            async def opened() -> httpx.Response:
                sending = open_stream(
                    self.client,
                    "POST",
                    self.model_url("chat/completions", call.model),
                    vendor=self.kind,
                    json=body,
                    headers=self.headers(call.api_key),
                    timeout=call.timeout_s,
                )
                return await stack.enter_async_context(sending)

            with self._model_limits():
                resp = await knobs_struck(opened, body, call.body, _KNOBS)
            async for _, data in sse_events(resp):
                if data.strip() == "[DONE]":
                    done = True
                    break
                chunk = self._parse_chunk(data)
                if chunk.get("usage"):
                    usage = Usage.from_openai(chunk["usage"])
                # Azure opens with a choices-less content-filter chunk, and its asynchronous
                # filter sends choices of annotations alone (no delta, no id), which
                # clients reading deltas trip over: neither carries any answer.  What such
                # a chunk says of its own at the top (the opening one's
                # prompt_filter_results) rides on the next chunk that goes on.
                if choices := [c for c in chunk.get("choices") or () if _answering(c)]:
                    for choice in choices:
                        _in_relay_shape(choice["delta"], whole=False)
                        _number_calls(choice, numbering)
                    chunk["choices"] = choices
                    chunk.pop("usage", None)
                    for key, value in held.items():
                        chunk.setdefault(key, value)
                    held = {}
                    written += answer_chars(chunk)
                    yield chunk
                else:
                    held |= vendor_fields(chunk, _CHUNK_FIELDS)
        if not done:  # cut off: never a whole answer to cache and meter as one
            raise VendorUnavailable(f"{self.kind}: stream ended before [DONE]")
        if usage == Usage():
            # A server that ignores include_usage: estimated, rather than an answer
            # metered (and cached) as free.
            usage = Usage.estimated(call.body, written)
        yield usage

    async def embed(self, call: VendorCall) -> VendorResult:
        """Embeddings; only prompt tokens are billed.  A 200 without a ``data`` list (a
        proxy's ``{"error": ...}``) is the vendor's failure, as for chat; a server that
        says no usage is metered at an estimate, not as free."""
        data = await self._post("embeddings", call, {**call.body, "model": call.model})
        if data.get("error") or not isinstance(data.get("data"), list):
            said = data.get("error") or "the answer has no data"
            failure = _vendor_failure(f"{self.kind}: HTTP 200 without embeddings", said)
            raise scrubbed(failure, call.api_key)
        prompt = int((data.get("usage") or {}).get("prompt_tokens") or 0)
        if not prompt:
            prompt = Usage.estimated(call.body, 0).input_tokens
        return VendorResult(data, Usage(input_tokens=prompt))

    async def complete(self, call: VendorCall) -> VendorResult:
        """A legacy ``/completions`` call; the relay packs many prompts into one list."""
        data = await self._post("completions", call, self._body(call, chat=False))
        return VendorResult(self._answer(data, call), _usage(data, call))

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        """Upload the calls as a JSONL file and start a 24-hour batch; returns its id.

        Creating a batch is not idempotent, and a create call that went out and failed
        without a clear answer (the connection dropped, it timed out, a 5xx, a 200
        nobody can read) may have created the batch all the same, to run and bill.  So
        the batch is tagged with a nonce of its own (``metadata``), and such a failure is
        settled by looking for it in the account's latest batches (``_created``): found,
        it is the batch (followed as if the create had answered); shown absent, the
        failure stands (its requests may go on the realtime way), and its input file is
        deleted (a create still on its way then finds no file); when the look cannot
        say, ``VendorAnswerUnreadable``: never sent again.  A create call that never went
        out (no connection), and a refusal (a 4xx, a 429, a 503 overloaded), stand as
        they are, and the input file goes.  Calls this vendor cannot take (more stop
        sequences than it allows) are ``CallsRefused`` before anything is sent.
        """
        lines = batch_lines(calls, self._batch_line)
        jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = await self._request(
            "POST",
            self.url("files"),
            api_key,
            data={"purpose": "batch"},
            files={"file": ("batch.jsonl", jsonl, "application/jsonl")},
        )
        file_id = str(json_body(upload, self.kind)["id"])
        nonce, asked_at = uuid.uuid4().hex, time.time()
        try:
            batch = await self._request(
                "POST",
                self.url("batches"),
                api_key,
                json={
                    "input_file_id": file_id,
                    "endpoint": self.batch_endpoint,
                    "completion_window": "24h",
                    "metadata": {NONCE_KEY: nonce},
                },
            )
            return _batch_id(json_body(batch, self.kind), self.kind)
        except RelayError as err:
            if not in_doubt(err):  # not sent, or refused: no batch was made
                await self._drop_file(file_id, api_key)
                raise
            failure = err
        for wait in self.lookup_waits_s:
            await asyncio.sleep(wait)  # a create still on its way at the vendor lands
            found = await self._created(nonce, file_id, asked_at, api_key, failure)
            if found is not None:
                log.warning("%s: batch %s was made though its create call failed", self.kind, found)
                return found
        await self._drop_file(file_id, api_key)
        raise failure

    async def poll_batch(
        self, batch_id: str, api_key: str
    ) -> dict[str, VendorResult | Exception] | None:
        """None while the batch runs; then every request's result or error by custom_id.

        A batch that failed validation has no per-request results: that raises.
        """
        resp = await self._request("GET", self.url(f"batches/{batch_id}"), api_key)
        batch = json_body(resp, self.kind)
        status = batch.get("status")
        if status not in ENDED:
            return None
        if status == "failed":
            errors = (batch.get("errors") or {}).get("data") or []
            detail = "; ".join(str(e.get("message", e)) for e in errors) or "no detail given"
            raise VendorBadRequest(f"{self.kind}: batch {batch_id} failed: {detail}")
        # Expired and cancelled batches list their unfinished requests in the error file.
        results: dict[str, VendorResult | Exception] = {}
        for key in ("output_file_id", "error_file_id"):
            if batch.get(key):
                content = await self._request(
                    "GET", self.url(f"files/{batch[key]}/content"), api_key
                )
                for entry in jsonl_objects(content.text, self.kind):
                    got = batch_result(self.kind, self._batch_entry, entry)
                    results[str(entry.get("custom_id"))] = got
        return results

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        """Ask the vendor to stop a batch; it ends ``cancelled``, and the requests it had
        not run yet come back in its error file as ``batch_cancelled``."""
        await self._request("POST", self.url(f"batches/{batch_id}/cancel"), api_key)

    async def clean_batch(self, batch_id: str, api_key: str) -> None:
        """Delete an answered batch's input, output and error files: they stay in the
        account's file storage, which is limited, until deleted (the batch itself
        cannot be)."""
        resp = await self._request("GET", self.url(f"batches/{batch_id}"), api_key)
        batch = json_body(resp, self.kind)
        for field in ("input_file_id", "output_file_id", "error_file_id"):
            if isinstance(file_id := batch.get(field), str) and file_id:
                await self._request("DELETE", self.url(f"files/{file_id}"), api_key)

    def _batch_line(self, custom_id: str, call: VendorCall) -> dict[str, Any]:
        """One line of a batch's input file."""
        body = self._body(call)
        return {"custom_id": custom_id, "method": "POST", "url": self.batch_endpoint, "body": body}

    async def _created(
        self, nonce: str, file_id: str, asked_at: float, api_key: str, failure: RelayError
    ) -> str | None:
        """The id of the batch a failed create call made after all: the one tagged with
        ``nonce`` (or made from ``file_id``, for a server that keeps no metadata) among
        the account's batches, newest first, paged back to some made before the call;
        None when it is not there.  ``VendorAnswerUnreadable`` when the list cannot say
        (it fails, its pages are in no order the look can trust, or it runs past
        ``LOOKUP_PAGES`` before reaching the batches older than the call)."""

        def cannot_tell(why: str) -> VendorAnswerUnreadable:
            return VendorAnswerUnreadable(
                f"{self.kind}: the vendor batch's create call failed ({failure.message}), "
                f"and whether it made the batch cannot be told ({why}): the vendor may run "
                "it, so its requests are not sent again"
            )

        after: str | None = None
        last = float("inf")  # when the last batch listed was made: each is older
        older = asked_at - LOOKUP_SKEW_S  # (the vendor's clock may run behind the relay's)
        for _ in range(LOOKUP_PAGES):
            params: dict[str, str | int] = {"limit": 100, **({"after": after} if after else {})}
            # Merged into the URL's own query (Azure's api-version), which httpx's
            # ``params`` would replace.
            listing = str(httpx.URL(self.url("batches")).copy_merge_params(params))
            try:
                resp = await self._request("GET", listing, api_key)
                page = json_body(resp, self.kind)
                batches, more = page["data"], page.get("has_more")
            except RelayError as err:
                raise cannot_tell(f"listing the batches failed: {err.message}") from None
            except SHAPE_ERRORS:
                raise cannot_tell("the batch list could not be read") from None
            if not isinstance(batches, list):
                raise cannot_tell("the batch list could not be read")
            for batch in batches:
                made = batch.get("created_at") if isinstance(batch, dict) else None
                if not isinstance(made, int | float) or made > last:
                    raise cannot_tell("the batch list is not newest first")
                last = made
                meta = batch.get("metadata")
                ours = isinstance(meta, dict) and meta.get(NONCE_KEY) == nonce
                if ours or batch.get("input_file_id") == file_id:
                    if not isinstance(found := batch.get("id"), str) or not found:
                        raise cannot_tell("the batch is listed without its id")
                    return found
                if made < older:
                    return None  # every batch made since the call was seen
            if not more:
                return None
            after = batches[-1].get("id") if batches else None
            if not isinstance(after, str) or not after:
                raise cannot_tell("the batch list pages on from nowhere")
        raise cannot_tell(f"more than {LOOKUP_PAGES * 100} batches were made since")

    async def _drop_file(self, file_id: str, api_key: str) -> None:
        """Delete the input file of a batch that was not made (best effort): it would
        stay in the account's file storage, and a create still on its way at the vendor
        then finds no file to run."""
        try:
            await self._request("DELETE", self.url(f"files/{file_id}"), api_key)
        except RelayError as err:
            log.warning("%s: batch input file not deleted: %s", self.kind, err.message)

    # -- helpers ------------------------------------------------------------------------

    def _body(self, call: VendorCall, *, chat: bool = True) -> dict[str, Any]:
        body = {**without_cache_control(call.body, continues_prefill=False), "model": call.model}
        if self.config.send_reasoning:
            _reasoning_sent_back(body, call.body)
        if self._knows_new_limit():  # OpenAI itself, or Azure
            body.pop("top_k", None)  # an Anthropic client's: OpenAI itself has no such knob
            _check_stops(body.get("stop"), self.kind)
        body.pop("stream", None)
        body.pop("stream_options", None)
        if _NO_PARALLEL_KNOB.match(call.model):
            # Left off rather than the model refusing the whole request: a legacy
            # ``functions`` request asks for one call at a time (functions_to_tools), and
            # an alias may route any client's tools to an o-series candidate.
            body.pop("parallel_tool_calls", None)
        if isinstance(body.get("user"), str) and len(body["user"]) > MAX_USER:
            body["user"] = _short_user(body["user"])
        new_limit = self._knows_new_limit() or _REASONING.match(call.model)
        if chat and "max_tokens" in body and new_limit:
            # OpenAI's reasoning models refuse the deprecated max_tokens (what an Anthropic
            # client's request carries).  OpenAI and Azure take the new name for every
            # model (an Azure deployment's name says nothing of its model); other
            # OpenAI-compatible servers may not know it, so they get it for these only.
            body.setdefault("max_completion_tokens", body.pop("max_tokens"))
            body.pop("max_tokens", None)
        elif chat and body.get("max_completion_tokens") is not None and not new_limit:
            # The other way: Ollama's /v1 (ollama/ollama#7125) and DeepSeek read max_tokens
            # alone and drop the new name unread, so the client's cap would be lost and the
            # model write on to its context's end; every OpenAI-compatible server reads
            # the old name (the new one wins over it, as on OpenAI's own).
            body["max_tokens"] = body.pop("max_completion_tokens")
        return body

    async def _post(self, path: str, call: VendorCall, body: dict[str, Any]) -> dict[str, Any]:
        resp = await send(
            self.client,
            "POST",
            self.model_url(path, call.model),
            vendor=self.kind,
            json=body,
            headers=self.headers(call.api_key),
            timeout=call.timeout_s,
        )
        return json_body(resp, self.kind)

    async def _request(self, method: str, url: str, api_key: str, **kwargs: Any) -> httpx.Response:
        return await send(
            self.client,
            method,
            url,
            vendor=self.kind,
            headers=self.headers(api_key),
            timeout=self.config.api_timeout_s,
            **kwargs,
        )

    def _answer(self, data: dict[str, Any], call: VendorCall) -> dict[str, Any]:
        """``data``, if it is an answer.  A 200 is not one by itself: OpenRouter and other
        proxies answer an upstream failure with ``{"error": ...}`` and a 200, and such a
        body (or any without a choice: OpenAI's spec allows ``choices: []`` only on a
        stream's usage chunk) is the vendor's failure, never an answer to pass on or
        cache, nor a success for the vendor's health."""
        choices = data.get("choices")
        if data.get("error") or not isinstance(choices, list) or not choices:
            said = data.get("error") or "the answer has no choices"
            failure = _vendor_failure(f"{self.kind}: HTTP 200 without an answer", said)
            raise scrubbed(failure, call.api_key)
        _messages_in_relay_shape(data)
        return data

    def _parse_chunk(self, data: str) -> dict[str, Any]:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise VendorUnavailable(f"{self.kind}: stream sent a line that is not JSON") from None
        if not isinstance(chunk, dict):
            raise VendorUnavailable(f"{self.kind}: stream sent a line that is not an object")
        # An error after the 200 has gone out arrives as an event of its own.
        if chunk.get("error"):
            raise refused(_vendor_failure(f"{self.kind}: error mid-stream", chunk["error"]))
        return chunk

    def _batch_entry(self, entry: dict[str, Any]) -> VendorResult | Exception:
        """One line of a batch's output or error file (``batch_result`` takes a line in a
        shape this cannot read)."""
        response = entry.get("response")
        if response is None:
            return self._not_run(entry)
        body = response.get("body") or {}
        status = int(response.get("status_code") or 0)
        if status == 200 and isinstance(body.get("choices"), list):
            _messages_in_relay_shape(body)  # read as a live answer is
            return VendorResult(body, Usage.from_openai(body.get("usage")))
        if status < 400:  # no status, or a 200 without an answer (a proxy's {"error": ...})
            said = f"{self.kind}: a batch response without an answer (HTTP {status})"
            return VendorAnswerUnreadable(said)
        # The error object of a live answer: classified the same way.
        error = body.get("error") or {}
        if not isinstance(error, dict):
            return classified(self.kind, status, str(error), None, None)
        code, param = error.get("code"), error.get("param")
        err = classified(
            self.kind,
            status,
            str(error.get("message", "")),
            code if isinstance(code, str) else None,
            param if isinstance(param, str) else None,
        )
        return _knob_refused_in_batch(err)

    def _not_run(self, entry: dict[str, Any]) -> Exception:
        """A line without a response: its error says why the request never ran
        (batch_expired, batch_cancelled), and another route may still answer it.  Without
        one, nothing says it did not run (and was not billed)."""
        error = entry.get("error")
        said = (error.get("code") or error.get("message")) if isinstance(error, dict) else None
        if not said:
            return VendorAnswerUnreadable(f"{self.kind}: a batch line with no response nor error")
        return VendorUnavailable(f"{self.kind}: batch request not run: {said}")


def _batch_id(batch: Any, kind: str) -> str:
    """The id of a batch object; a 200 without one may still have made the batch."""
    found = batch.get("id") if isinstance(batch, dict) else None
    if not isinstance(found, str) or not found:
        raise VendorUnavailable(f"{kind}: the batch was created with an answer without its id")
    return found


def _vendor_failure(where: str, error: Any) -> RelayError:
    """An error object a vendor sent in place of an answer after its 200 (OpenAI's
    ``{"message", "code"}``, or a bare string), in its own words: its rate limit, or a
    failure another candidate may not have."""
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    cls = VendorRateLimited if code == "rate_limit_exceeded" else VendorUnavailable
    return cls(f"{where}: {message}")


def _knob_refused_in_batch(err: RelayError) -> RelayError:
    """A batch line's error; one refusing a knob ``knob_refused`` strikes on the realtime
    way (a ``VendorBadRequest`` naming it) as a retryable ``VendorUnsupported``: not
    answered this way, so the lane sends the request on the realtime way, where the knob
    is struck and the request sent again if the relay set it (an Anthropic client's
    ``thinking`` made ``reasoning_effort``), and the refusal is the answer if the client
    did.  Which of the two cannot be told from the result file (it carries no request),
    so a client's own knob refused costs one more 400; neither is billed (a batch line
    that failed is not).  Both lanes answer such a request alike."""
    if not isinstance(err, VendorBadRequest) or isinstance(err, ContentFiltered):
        return err
    for knob in _KNOBS:
        if blames(err, knob):
            said = f"the vendor batch could not take it ({knob} refused): {err.message}"
            return VendorUnsupported(said, param=knob)
    return err


# The knobs a request can go without, struck when the vendor refuses them (``knob_refused``),
# each to the field of the relay's body that makes it the client's own (None: struck
# whoever set it).  ``parallel_tool_calls``: an o-series model behind an Azure deployment
# name that does not say so, or a server without the knob, refuses it, and a legacy
# ``functions`` request carries it though the client never sent it (functions_to_tools).
# ``reasoning_effort`` only when the relay added it: an Anthropic client's ``thinking``
# becomes it for every OpenAI-format candidate, and a model that does not reason refuses
# it (OpenAI's gpt-4o, gpt-4.1: a 400 ``unsupported_parameter``, or a level it lacks with
# ``unsupported_value``; a local model behind Ollama's /v1: "does not support thinking").
_KNOBS: dict[str, str | None] = {
    "parallel_tool_calls": None,
    "reasoning_effort": "reasoning_effort",
}


def _reasoning_sent_back(body: dict[str, Any], given: dict[str, Any]) -> None:
    """Each assistant message of ``body`` (the request as it goes out) given back the
    string ``reasoning_content`` its turn carries in ``given`` (the relay's body), which
    ``without_cache_control`` leaves out: a vendor with ``send_reasoning`` wants it.
    DeepSeek's thinking mode refuses (400) a request whose earlier tool-call turns lack
    it, and ignores it on turns without tool calls; a chat client echoes it, and a
    Responses client's reasoning items come as it.  New messages and a new list, never
    the given ones (the cache key and other candidates read ``given``)."""
    sent, kept = given.get("messages"), body.get("messages")
    if not isinstance(sent, list) or not isinstance(kept, list) or len(sent) != len(kept):
        return
    out: list[Any] | None = None
    for i, (said, going) in enumerate(zip(sent, kept, strict=True)):
        if not (isinstance(said, dict) and isinstance(going, dict)):
            continue
        reasoning = said.get("reasoning_content")
        if said.get("role") == "assistant" and isinstance(reasoning, str):
            if out is None:
                out = body["messages"] = list(kept)
            out[i] = {**going, "reasoning_content": reasoning}


def _check_stops(stop: Any, kind: str) -> None:
    """Refuse more stop sequences than OpenAI takes (an Anthropic client may send any
    number): an Anthropic candidate may serve the request, so it is this one's refusal."""
    if isinstance(stop, list) and len(stop) > MAX_STOPS:
        raise VendorUnsupported(
            f"stop_sequences: {kind} takes at most {MAX_STOPS} stop sequences "
            f"(OpenAI's `stop`), {len(stop)} were given",
            param="stop_sequences",
        )


def _short_user(user: str) -> str:
    """A ``user`` too long for OpenAI (Claude Code's ``metadata.user_id`` runs to ~150
    characters) as its sha256: 64 characters, the same for the same user, so OpenAI's
    abuse tracking still tells users apart.  The envelope keeps the full value."""
    return hashlib.sha256(user.encode()).hexdigest()


# The fields every chunk has its own of (a left-out chunk's are not the next one's):
# Azure's opening chunk gives a blank id, object, created and model.
_CHUNK_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage"})


def _answering(choice: Any) -> bool:
    """Whether a streamed choice is part of the answer: it has a delta, or a finish
    reason (given an empty delta, as OpenAI's final choice has)."""
    if not isinstance(choice, dict):
        return False
    if not isinstance(choice.get("delta"), dict):
        if not choice.get("finish_reason"):
            return False
        choice["delta"] = {}
    return True


class _StreamCalls:
    """One choice's tool calls on a stream: which call each fragment is part of, and the
    id and name each call has said so far to the client (``ToolCallIndexes``)."""

    def __init__(self) -> None:
        self.indexes = ToolCallIndexes()
        self.said: dict[int, tuple[str, str]] = {}  # call number -> its id, its name


def _number_calls(choice: dict[str, Any], numbering: dict[int, _StreamCalls]) -> None:
    """A streamed choice's tool-call fragments as OpenAI sends them: at the ``index``
    OpenAI would give them, each call its own, counting up from 0 (``ToolCallIndexes``),
    a call's id said once (its first) and its name once, whole or in pieces.  An
    OpenAI-format client's SDK merges fragments by index and joins the strings they
    carry, so a live stream would otherwise reach it unlike the same answer replayed
    from the cache (or streamed to an Anthropic or Responses client): Ollama's /v1
    sends every parallel call at index 0 (older builds no index at all), two calls
    made one (get_weatherget_time); Fireworks and MiniMax on NIM repeat a call's id
    and name on every fragment (debug_tooldebug_tool); Poolside gives a call another
    id after its first fragment (call_acall_b).  A name streamed in pieces (Gemini)
    goes on in its pieces, as the cached answer joins them (``more_name``).  OpenAI's
    own numbering is kept as it is."""
    frags = choice["delta"].get("tool_calls")
    if not isinstance(frags, list):
        return
    at = choice.get("index")
    calls = numbering.setdefault(at if isinstance(at, int) else 0, _StreamCalls())
    for frag in frags:
        if not isinstance(frag, dict):
            continue
        n = frag["index"] = calls.indexes.of(frag)
        had_id, had_name = calls.said.get(n, ("", ""))
        if frag.get("id") and had_id:
            del frag["id"]
        for payload in (frag.get("function"), frag.get("custom")):  # (a custom tool's)
            if isinstance(payload, dict) and payload.get("name") == had_name and had_name:
                del payload["name"]
        calls.said[n] = (calls.indexes.call_id(n), calls.indexes.name(n))


def _messages_in_relay_shape(answer: dict[str, Any]) -> None:
    """Each message of a whole answer in the shape the relay reads (``_in_relay_shape``)."""
    for choice in answer["choices"]:
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            _in_relay_shape(choice["message"], whole=True)


def _in_relay_shape(said: dict[str, Any], *, whole: bool) -> None:
    """A message (``whole``) or a stream's delta as the relay reads one, whatever
    OpenAI-compatible server sent it: its thinking under ``reasoning_content``
    (``_reasoning_as_content``), its text a string (``_content_parts``)."""
    _reasoning_as_content(said)
    _content_parts(said, whole)


def _content_parts(said: dict[str, Any], whole: bool) -> None:
    """A message's (or delta's) ``content`` sent as a list of parts made a string, as
    OpenAI sends it and every translator, the assembler and the cache read it.

    Mistral's reasoning models (Magistral; Mistral Small and Medium given
    ``reasoning_effort``) answer so, streamed or not: ``{"type": "text", "text"}`` parts
    are the answer, and a ``{"type": "thinking", "thinking": [{"type": "text", "text"}],
    "closed"}`` part its reasoning, which goes on as ``reasoning_content`` (after any the
    server sent under that name), as every other vendor's thinking does.  Other parts
    (Mistral's ``reference`` ids) have no slot in a chat answer and are left out.  With
    no text part, a message's content is "" (null beside tool calls, as OpenAI's), a
    delta's null."""
    parts = said.get("content")
    if not isinstance(parts, list):
        return
    text: list[str] = []
    thought: list[str] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif kind == "thinking":
            thought.append(_thinking_text(part.get("thinking")))
    if text:
        said["content"] = "".join(text)
    else:
        said["content"] = "" if whole and not said.get("tool_calls") else None
    if reasoning := "".join(thought):
        had = said.get("reasoning_content")
        said["reasoning_content"] = (had if isinstance(had, str) else "") + reasoning


def _thinking_text(thinking: Any) -> str:
    """The text of a thinking part: Mistral's list of text chunks (a server may send a
    string)."""
    if isinstance(thinking, str):
        return thinking
    if not isinstance(thinking, list):
        return ""
    return "".join(
        c["text"] for c in thinking if isinstance(c, dict) and isinstance(c.get("text"), str)
    )


def _reasoning_as_content(said: dict[str, Any]) -> None:
    """A message's (or delta's) thinking sent as ``reasoning`` (Ollama's /v1, vLLM,
    OpenRouter) renamed ``reasoning_content``, the one name the relay's translators and
    its size estimate read, and what every other vendor's thinking reaches OpenAI-format
    clients as.  A vendor that sends both keeps both, as sent."""
    if isinstance(said.get("reasoning"), str) and "reasoning_content" not in said:
        said["reasoning_content"] = said.pop("reasoning")


def _usage(data: dict[str, Any], call: VendorCall) -> Usage:
    """The answer's usage; estimated when the server reports none (some OpenAI-compatible
    servers do not), rather than an answer metered and cached as free."""
    usage = Usage.from_openai(data.get("usage"))
    if usage != Usage():
        return usage
    # Counted as a stream's chunks are: a message holds what a delta does (a completion
    # its text).
    choices = data.get("choices")
    deltas = [
        {"delta": _said(c.get("message")) or _said({"content": c.get("text")})}
        for c in (choices if isinstance(choices, list) else [])
        if isinstance(c, dict)
    ]
    return Usage.estimated(call.body, answer_chars({"choices": deltas}))


def _said(message: Any) -> dict[str, Any]:
    """A message as a delta ``answer_chars`` can count: nothing when it is not one."""
    if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
        return {}
    return message
