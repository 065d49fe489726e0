"""Window batching: embedding (and legacy completion) calls for one vendor model within a
short window go out as one call with array input, and the answer is split back.

Chat is never batched this way: a chat completion takes exactly one conversation, so
there is no list to merge into.  Embeddings (and legacy completions with a list prompt)
take many inputs per call, and vendors price them per token, so batching costs nothing
extra while saving requests against the vendor's RPM limit and per-call latency.

The vendor's RPM limit is therefore taken per vendor call, not per caller: a window, once
it closes (on age or size), waits for one request of the vendor's RPM (``admit``, given
the callers' ``ticket``s: the dispatcher waits in the most urgent of their priority lanes,
until the latest of their deadlines) and then goes out as one call.  A caller that gives
up while its window waits there leaves it, as it leaves an open window (its inputs are
never sent); when the last one leaves, the window's wait is given up too.  Its other
limits (tokens, the tenant's) stay per caller: they are the caller's own, whoever it
shares a call with.

A window never carries more than ``max_size`` inputs, nor more than the vendor takes in
one request (OpenAI's embeddings: 2,048 inputs, 300,000 tokens, estimated at four
characters a token): a caller that would take it over flushes it first and opens the next
one, so the merged call is never refused for its size and sent again caller by caller.
A caller over that alone goes alone.

Only the vendor call itself is the vendor's time: each caller is told when its inputs go
out (``on_sent``, with the call's ``Claim``), and when they are taken back to go again
on a call of their own, so the dispatcher holds the vendor's time-to-answer limit from
then, never the window's wait nor the RPM's.  One call has one outcome for the vendor's
health whatever it carried: the caller to report it is the one that wins its ``Claim``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from agents.adapters.base import VendorCall, VendorResult
from agents.adapters.http import scrubbed
from schemas.errors import RelayError, VendorBadRequest, VendorError, VendorRequestTooLarge
from schemas.usage import Usage, estimated_tokens

EmbedFn = Callable[[VendorCall], Awaitable[VendorResult]]
# Waits until the vendor's rate limits let one call go out for callers holding these
# tickets (whatever each caller gave ``embed``); raises a RelayError (our own 429) when
# that cannot be within their time, and every caller of the call gets it.
Admit = Callable[[list[Any]], Awaitable[None]]
# Told of a caller that gave up while its inputs were already on their way to the vendor:
# its share of the answer is billed all the same, so somebody must meter it.
Orphaned = Callable[["asyncio.Future[VendorResult]"], None]


class Claim(Protocol):
    """Asked by a caller of a call that went out, cut before it answered: whether the
    call's outcome is this caller's to report (one call, one outcome).  The first to ask
    wins it, unless ``last`` and another caller is still waiting on the call (a caller
    cut by its own deadline says nothing of the vendor while the call goes on for
    others; the last one to leave does, when nobody heard the call's outcome)."""

    def __call__(self, *, last: bool = False) -> bool: ...


# Told with the call's ``Claim`` when the caller's inputs go out, and with None when they
# are taken back to go again alone (a shared 400, an answer that could not be split).
Sent = Callable[[Claim | None], None]


@dataclass(frozen=True)
class Shape:
    """Where a batchable endpoint keeps its inputs and its per-input answers."""

    inputs: str  # request field holding a string or a list
    outputs: str  # response field holding one item per input, each with an ``index``
    # The most one request may carry, as the vendor says (None: only ``max_size``).
    max_inputs: int | None = None
    max_tokens: int | None = None  # summed over its inputs (estimated for text)


# OpenAI's limits for one embeddings request (its API reference, ``input``).
EMBEDDINGS = Shape("input", "data", max_inputs=2048, max_tokens=300_000)
COMPLETIONS = Shape("prompt", "choices")


@dataclass(eq=False)  # one caller's place: found by identity, never by value
class _Pending:
    call: VendorCall
    inputs: list[Any]
    ticket: Any = None  # for ``admit``: the caller's lane and deadline, say
    future: asyncio.Future[VendorResult] = field(default_factory=asyncio.Future)
    # The call its inputs wait in (the window's, or its own after a fallback), until sent.
    carrier: _Window | None = None
    sent: bool = False  # its inputs went out: the vendor bills them
    left: bool = False  # its caller gave up after they went out (orphaned)
    tokens: int = 0  # its inputs' tokens, estimated
    on_sent: Sent | None = None
    orphaned: Orphaned | None = None

    def going(self, carrier: _Window | None) -> None:
        """Its inputs went out on ``carrier``'s call, or (None) were taken back."""
        self.sent = carrier is not None
        if self.on_sent is not None:
            self.on_sent(carrier.claim if carrier is not None else None)


@dataclass(eq=False)
class _Window:
    pending: list[_Pending] = field(default_factory=list)
    size: int = 0
    tokens: int = 0
    timer: asyncio.TimerHandle | None = None
    # Once closed: the task that waits for the vendor's RPM, then sends the call.
    task: asyncio.Task[None] | None = None
    told: bool = False  # one of its callers reports the call's outcome (see ``Claim``)

    def claim(self, *, last: bool = False) -> bool:
        """This call's ``Claim``."""
        if self.told:
            return False
        if last and any(not p.left and not p.future.done() for p in self.pending):
            return False
        self.told = True
        return True

    def join(self, pending: _Pending) -> None:
        self.pending.append(pending)
        self.size += len(pending.inputs)
        self.tokens += pending.tokens

    def leave(self, pending: _Pending) -> None:
        self.pending.remove(pending)
        self.size -= len(pending.inputs)
        self.tokens -= pending.tokens

    def full(self, cap: int, shape: Shape) -> bool:
        return self.size >= cap or (
            shape.max_tokens is not None and self.tokens >= shape.max_tokens
        )

    def takes(self, pending: _Pending, cap: int, shape: Shape) -> bool:
        """Whether ``pending`` fits in this window, under ``cap`` inputs and the
        vendor's tokens for one request (an empty window takes anyone)."""
        if not self.pending:
            return True
        if self.size + len(pending.inputs) > cap:
            return False
        return shape.max_tokens is None or self.tokens + pending.tokens <= shape.max_tokens


class EmbeddingBatcher:
    """Collects calls per key (vendor, model, params) and flushes on size or age."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.calls_sent = 0

    async def embed(
        self,
        key: tuple[str, ...],
        call: VendorCall,
        send: EmbedFn,
        window_ms: int,
        max_size: int,
        shape: Shape = EMBEDDINGS,
        orphaned: Orphaned | None = None,
        admit: Admit | None = None,
        ticket: Any = None,
        on_sent: Sent | None = None,
    ) -> VendorResult:
        """The caller's own answers; ``shared`` says whether others rode the same call.

        A caller that gives up (its deadline) before the window goes out (while it is open,
        or waiting on ``admit``) leaves it: its inputs are not sent.  One that gives up
        after is ``orphaned``: told the future of the share it will be billed for (also
        of a call answered but not split back, before it goes again alone).  The
        window's call waits on the ``admit`` of the caller that closes it, told every
        caller's ``ticket``; ``on_sent`` is told when the caller's inputs go out."""
        raw = call.body.get(shape.inputs)
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        # Text and token-array inputs never share a call: vendors refuse a mixed list.
        key = (*key, "text" if all(isinstance(i, str) for i in inputs) else "tokens")
        tokens = sum(_tokens(i) for i in inputs)
        pending = _Pending(call, inputs, ticket, tokens=tokens, on_sent=on_sent, orphaned=orphaned)
        cap = min(max_size, shape.max_inputs or max_size)
        opened = self._windows.get(key)
        if opened is not None and not opened.takes(pending, cap, shape):
            self._flush(key, send, shape, admit)  # it goes as it is; this caller, in the next
        window = self._windows.setdefault(key, _Window())
        pending.carrier = window
        window.join(pending)
        if window.full(cap, shape):
            self._flush(key, send, shape, admit)
        elif window.timer is None:
            loop = asyncio.get_running_loop()
            window.timer = loop.call_later(window_ms / 1000, self._flush, key, send, shape, admit)
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            carrier = pending.carrier
            if not pending.sent and carrier is not None and pending in carrier.pending:
                carrier.leave(pending)  # not sent yet: never paid for
                pending.future.cancel()
                if not carrier.pending and carrier.task is not None:
                    carrier.task.cancel()  # nobody left to send for: no RPM spent on it
            else:
                pending.left = True
                # Retrieved here whoever else reads it, so asyncio never complains of an
                # exception nobody read (the worker stopping, say).
                pending.future.add_done_callback(_retrieve)
                if orphaned is not None:
                    orphaned(pending.future)
            raise

    def _flush(
        self, key: tuple[str, ...], send: EmbedFn, shape: Shape, admit: Admit | None = None
    ) -> None:
        window = self._windows.pop(key, None)
        if window is None or not window.pending:
            return
        if window.timer is not None:
            window.timer.cancel()
        self._start(window, send, shape, admit)

    def _start(self, window: _Window, send: EmbedFn, shape: Shape, admit: Admit | None) -> None:
        """Send ``window``'s call on a task of its own (no caller's: any may leave)."""
        task = asyncio.get_running_loop().create_task(self._send(window, send, shape, admit))
        window.task = task
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, window: _Window, send: EmbedFn, shape: Shape, admit: Admit | None
    ) -> None:
        if admit is not None:
            try:
                await admit([p.ticket for p in window.pending])
            except RelayError as err:  # our own limits: nothing went out
                _reject(window, window.pending, partial(_clone, err))
                return
        batch = list(window.pending)  # those still waiting: the others left meanwhile
        if not batch:
            return
        for p in batch:
            p.going(window)  # from here the vendor's time to answer runs
        first = batch[0].call
        merged = [item for p in batch for item in p.inputs]
        body = {**first.body, shape.inputs: merged}
        if len({repr(p.call.body.get("user")) for p in batch}) > 1:
            # Callers of different end users (tenants, even) share the call: none of
            # theirs may stand for the others' inputs in the vendor's abuse tracking.
            body.pop("user", None)
        call = VendorCall(
            model=first.model,
            body=body,
            api_key=first.api_key,
            # As long as its most patient caller waits: a caller with a short deadline
            # gives up on its own, and never cuts the others' shared call short.
            timeout_s=max(p.call.timeout_s for p in batch),
        )
        self.calls_sent += 1
        try:
            result = await send(call)
        except RelayError as err:
            if isinstance(err, VendorBadRequest | VendorRequestTooLarge) and len(batch) > 1:
                # One caller's input may be what the vendor refused (or made the call too
                # large for it): each goes on its own, so only that caller gets the 400 or
                # 413 (and nobody sees another's input, nor fails for another tenant's).
                await self._one_by_one(batch, send, shape, admit)
                return
            # Struck of the key the shared call went with: the others' own keys may differ,
            # and each caller's dispatcher strikes only its own.
            scrubbed(err, call.api_key)
            # Each caller hears the vendor's error as a call of its own would have: its
            # code and the field it blamed (context_length_exceeded, content_filter's
            # prompt), which clients branch on.
            _reject(window, batch, partial(_clone, err), call.api_key)
            return
        except Exception as exc:
            # By its type alone: its text may quote the vendor's answer (the dispatcher
            # reports such failures so too), which every caller of the window would hear.
            what = type(exc).__name__
            _reject(window, batch, partial(VendorError, f"batched call failed ({what})"))
            return
        try:
            parts = split(result, [p.inputs for p in batch], shape)
        except Exception as exc:  # an answer we cannot cut up must still answer everyone
            # The vendor answered, and billed the call: each caller is billed its share
            # (by the size of its inputs) on its one ledger line, whatever comes next.
            _bill(batch, result.usage)
            if isinstance(exc, Mismatched) and len(batch) > 1:
                # An answer missing an input (a server that skips one it will not take)
                # cannot be cut by position: later callers would get earlier ones'
                # vectors, across tenants.  As for a 400, one caller's input may be the
                # cause: each goes on its own, and only an answer that still does not
                # match its inputs fails, as the vendor's.
                await self._one_by_one(batch, send, shape, admit)
                return
            what = type(exc).__name__
            _reject(window, batch, partial(VendorError, f"unreadable batched answer ({what})"))
            return
        for p, part in zip(batch, parts, strict=True):
            if not p.future.done():
                # (a caller that left has its share here: its outcome is nobody's)
                rode = p.left or not window.claim()
                p.future.set_result(replace(part, shared=len(batch) > 1, rode=rode))

    async def _one_by_one(
        self, batch: list[_Pending], send: EmbedFn, shape: Shape, admit: Admit | None
    ) -> None:
        """Each caller of ``batch`` on a call of its own (each one call of the vendor's
        RPM).  A caller that left meanwhile is sent no more."""
        alone = []
        for p in batch:
            if p.left:  # the shared call was refused, unbilled: nothing is sent for it now
                p.future.cancel()
            if p.future.done():
                continue
            p.carrier = _Window([p], len(p.inputs), p.tokens)
            p.going(None)  # waiting again (for the RPM): our own time, not the vendor's
            self._start(p.carrier, send, shape, admit)
            assert p.carrier.task is not None
            alone.append(p.carrier.task)
        await asyncio.gather(*alone, return_exceptions=True)


def _retrieve(future: asyncio.Future[VendorResult]) -> None:
    if not future.cancelled():
        future.exception()


def _reject(
    window: _Window,
    batch: list[_Pending],
    error: Callable[[], Exception],
    used_key: str | None = None,
) -> None:
    """Fail every caller still waiting, each with its own exception instance (the first
    one still there reports the call's failure, unless a caller cut from it did: one
    call, one outcome), saying whether the call went with the caller's own key
    (``used_key``)."""
    for p in batch:
        if not p.future.done():
            exc = error()
            if isinstance(exc, RelayError):
                exc.rode = p.left or not window.claim()
                exc.other_key = used_key is not None and p.call.api_key != used_key
            p.future.set_exception(exc)


def _clone(err: RelayError) -> RelayError:
    """``err`` again, for one more caller: the vendor's error as it came (the vendor's
    own code, the field it blamed, whether it took the call), not its message alone."""
    exc = type(err)(err.message, param=err.param, retry_after=err.retry_after)
    exc.vendor_code, exc.refused = err.vendor_code, err.refused
    return exc


def _bill(batch: list[_Pending], usage: Usage) -> None:
    """Bill ``batch``'s callers the call the vendor answered but that could not be split
    back: each its share of ``usage`` by the size of its inputs, as a share of a call it
    was cut from is (one that left has it as its orphaned answer; one still waiting is
    told it as ``orphaned``, then goes on, alone or failed).  Nothing counted, nothing
    billed."""
    if usage == Usage():
        return
    weights = [sum(_size(x) for x in p.inputs) for p in batch]
    cuts = {name: _shares(getattr(usage, name), weights) for name in Usage.model_fields}
    loop = asyncio.get_running_loop()
    for i, p in enumerate(batch):
        share = VendorResult({}, Usage(**{name: cut[i] for name, cut in cuts.items()}))
        if p.left:
            if not p.future.done():
                p.future.set_result(share)
        elif p.orphaned is not None and not p.future.done():
            billed: asyncio.Future[VendorResult] = loop.create_future()
            billed.set_result(share)
            p.orphaned(billed)


class Mismatched(ValueError):
    """A batched answer whose items are not one per input, indexed 0..n-1."""


def split(
    result: VendorResult, inputs: list[list[Any]], shape: Shape = EMBEDDINGS
) -> list[VendorResult]:
    """Cut a batched answer back into per-caller answers (one item per input, in order).
    The vendor counts tokens for the whole call only, so each caller is billed its share
    by size: prompt tokens (cached ones too) by the length of its inputs, completion
    tokens by the length of its answers, so a one-word caller never pays for a long one.

    Raises ``Mismatched`` unless the answer's items are indexed exactly 0..n-1 for the n
    inputs: cut by position, an answer that skipped an input would hand later callers
    the items of earlier ones."""
    items = sorted(result.body.get(shape.outputs, []), key=lambda d: d.get("index", 0))
    sizes = [len(own) for own in inputs]
    indices = [d.get("index") for d in items]
    if indices != list(range(sum(sizes))) or any(isinstance(i, bool) for i in indices):
        raise Mismatched(f"{len(items)} answers for {sum(sizes)} inputs, or not indexed 0..n-1")
    parts, start = [], 0
    for size in sizes:
        parts.append([{**d, "index": i} for i, d in enumerate(items[start : start + size])])
        start += size
    weights = [sum(_size(x) for x in own) for own in inputs]
    answered = [sum(len(str(d.get("text") or "")) for d in part) for part in parts]
    usage = result.usage
    tins = _shares(usage.input_tokens, weights)
    touts = _shares(usage.output_tokens, answered if any(answered) else sizes)
    cached = _shares(usage.cache_read_tokens, weights)
    out = []
    for part, tin, tout, hit in zip(parts, tins, touts, cached, strict=True):
        body = {**result.body, shape.outputs: part}
        body["usage"] = {"prompt_tokens": tin, "total_tokens": tin + tout}
        if shape is COMPLETIONS:
            body["usage"]["completion_tokens"] = tout
        own = Usage(input_tokens=tin, output_tokens=tout, cache_read_tokens=hit)
        out.append(VendorResult(body, own))
    return out


def _size(item: Any) -> int:
    """How much of the prompt an input is: characters of a string, tokens of a token list."""
    return len(item) if isinstance(item, str | list) else 1


def _tokens(item: Any) -> int:
    """An input's tokens: a token list's own, a string's at four characters a token."""
    if isinstance(item, str):
        return estimated_tokens(len(item))
    return len(item) if isinstance(item, list) else 1


def _shares(total: int, sizes: list[int]) -> list[int]:
    """``total`` split in proportion to ``sizes``, the remainder to the last share."""
    whole = max(1, sum(sizes))
    shares = [total * size // whole for size in sizes[:-1]]
    return [*shares, total - sum(shares)]
