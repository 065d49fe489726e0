"""Sending a batch's lines, for the OpenAI Batch API and Anthropic's Message Batches alike.

A batch always ends: every line either goes out as an envelope (and its answer comes back
through the results agent) or is recorded as failed here, before the client hears of the
batch.  Everything that can refuse a line (its header options, its envelope, its
encoding) is tried before the batch is stored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth import Caller
from gateway.bodies import count_refusal
from gateway.bus import unqueued_error
from gateway.relay import Options, Relay, with_beta
from schemas.batches import BatchObject, OutputLine, OutputResponse, line_correlation, new_id
from schemas.envelope import Endpoint, Priority, RequestEnvelope
from schemas.errors import BadRequest, RelayError, StoreUnavailable
from tables.batches import BatchStore

UNQUEUED = "the relay could not queue this request"
YIELD_EVERY = 256  # lines handled between turns of the event loop's other requests
log = logging.getLogger("relay.gateway")


@dataclass
class Line:
    """One request of a batch: its neutral body, or why it was refused."""

    custom_id: str
    body: dict[str, Any] | None = None
    refused: RelayError | None = None
    legacy: bool = False  # asked with ``functions``: answered with ``function_call``


async def refused_models(
    relay: Relay, who: Caller, models: set[str], endpoint: Endpoint
) -> dict[str, RelayError]:
    """Why each of a batch's models is refused to this caller (none: not there): each
    checked, and audited, once for the whole batch, however many lines name it."""
    refused: dict[str, RelayError] = {}
    for model in models:
        try:
            await relay.check_model(who, model)
            relay.check_kind(model, endpoint)
        except RelayError as err:
            refused[model] = err
    return refused


def store_quota(relay: Relay, who: Caller) -> int:
    """The bytes the caller's tenant may keep in the batch store (0: no limit)."""
    own = who.policy.batch_store_bytes
    return relay.settings.batch_store_bytes if own is None else own


def failed_line(custom_id: str, err: RelayError, request_id: str) -> OutputLine:
    body = err.openai_body()
    # An error may quote the client's input, lone surrogates and all, which no store or
    # topic can encode: quoted as escapes instead.
    message = str(body["error"]["message"]).encode("utf-8", "backslashreplace").decode()
    body["error"]["message"] = message
    response = OutputResponse(status_code=err.status, request_id=request_id, body=body)
    return OutputLine(custom_id=custom_id, response=response)


async def submit(
    relay: Relay,
    store: BatchStore,
    who: Caller,
    opts: Options,
    batch: BatchObject,
    endpoint: Endpoint,
    lines: list[Line],
) -> int:
    """Store ``batch`` and send its lines as background envelopes replying to the
    batch-results topic; refused and unsendable lines are recorded as failed: how many
    were.  Once a line is out it raises no more (``StoreUnavailable`` would tell the
    client to try again, making and paying for a second batch of the same lines)."""
    opts.priority = Priority.background
    envs: dict[int, RequestEnvelope] = {}
    refused: dict[int, RelayError] = {}
    for index, line in enumerate(lines):
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)  # a large batch shares the gateway with everyone else
        if line.refused is not None or line.body is None:
            refused[index] = line.refused or BadRequest("the request has no body")
            continue
        try:
            envs[index] = _envelope(relay, who, opts, batch, endpoint, index, line)
        except RelayError as exc:
            refused[index] = exc
    refusals = {i: failed_line(lines[i].custom_id, why, batch.id) for i, why in refused.items()}
    await store.create(who.tenant, batch, [line.custom_id for line in lines])
    # One Redis call for all of them, however many: a large batch of bad lines must not
    # make a round trip a line inside this one request.
    await store.record_many(batch.id, refusals)
    published = await relay.bus.publish_all(list(envs.values()))
    unqueued = {
        index: failed_line(lines[index].custom_id, unqueued_error(failed, UNQUEUED), batch.id)
        for index, failed in zip(envs, published, strict=True)
        if failed is not None  # (the error as the line's ledger entry says)
    }
    try:
        await store.record_many(batch.id, unqueued)
    except StoreUnavailable:
        # Those lines end batch_expired with the batch's window instead.
        log.warning("batch %s: %d unqueued lines not recorded", batch.id, len(unqueued))
        return len(refusals)
    return len(refusals) + len(unqueued)


def _envelope(
    relay: Relay,
    who: Caller,
    opts: Options,
    batch: BatchObject,
    endpoint: Endpoint,
    index: int,
    line: Line,
) -> RequestEnvelope:
    body = line.body or {}
    # Turns were counted as the client sent them (an OpenAI line by its route's model at
    # the batch's creation, an Anthropic one before translation, which makes each tool
    # result a message): only the lists kept one for one are counted here.
    if (refusal := count_refusal(body, turns=None)) is not None:
        raise refusal
    try:
        orjson.dumps(body)
    except TypeError as exc:  # orjson's limits: integers beyond 64 bits, say
        raise BadRequest(f"body: cannot be sent on ({exc})") from None
    opts.trace_id = new_id("")
    return relay.envelope(
        who,
        endpoint,
        with_beta(endpoint, body, opts),
        opts,
        correlation_id=line_correlation(batch.id, index, legacy=line.legacy),
        reply_to=relay.bus.topics.batch_results.name,
        deadline_ms=(batch.expires_at or batch.created_at) * 1000,
    )
