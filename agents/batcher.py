"""Window batching: embedding (and legacy completion) calls for one vendor model within a
short window go out as one call with array input, and the answer is split back.

Chat is never batched this way: a chat completion takes exactly one conversation, so
there is no list to merge into.  Embeddings (and legacy completions with a list prompt)
take many inputs per call, and vendors price them per token, so batching costs nothing
extra while saving requests against the vendor's RPM limit and per-call latency.

The vendor's RPM limit is therefore taken per vendor call, not per caller: a window, once
its time is up (or it is full), waits for one request of the vendor's RPM (``admit``,
given the callers' ``ticket``s: the dispatcher waits in the most urgent of their priority
lanes, until the latest of their deadlines) and then goes out as one call. While it waits
it still takes callers (within its limits below): under RPM pressure a window that closed
and queued alone would carry one caller a call, and the vendor would see as many calls as
without batching. A caller that joins it then waits in the lane the window already waits
in (one more urgent than that lane, a realtime caller at a window of batch work, opens a
window of its own instead, so it never waits behind that work: ``rank``); if the RPM
cannot let the window out by its first callers' deadlines, those hear our 429 and the
later ones wait again on a window of their own. A caller that gives up while its window
waits leaves it, as it leaves an open window (its inputs are never sent); when the last
one leaves, the window's wait is given up too. Its other limits (tokens, the tenant's)
stay per caller: they are the caller's own, whoever it shares a call with.

A window never carries more than ``max_size`` inputs, nor more than the vendor takes in
one request (OpenAI's embeddings: 2,048 inputs, 300,000 tokens, estimated at four
characters a token): a caller that would take it over closes it first and opens the next
one, so the merged call is not refused for its size (text denser than the estimate still
may be: see below).
A caller over that alone goes alone, and a window of one caller sends that caller's own
request as it came (a string prompt stays a string: Ollama's ``/v1/completions`` takes
no list).

A shared call the vendor refuses with a 400 or 413 may be refused for one caller's input
(or for the merge's size): its callers go again in halves, so a lone culprit is found
in a few calls rather than one per caller, and only it hears the 400.  A 400 that names
a parameter other than the inputs (``dimensions``, say: every caller of a window asked
the same) is every caller's as it came, without sending anyone again.  An answer that
cannot be split back (an input missing) goes again in halves too.  Either way the shared
call is still one call for the vendor's health (``reported``), though no caller hears
its outcome as its own.

A shared answer's top-level fields reach each caller only when they describe the whole
call (its id, model, fingerprint); a list with an entry per prompt (Azure's
``prompt_filter_results``) is cut to the caller's own entries, renumbered, and any other
field a vendor adds is left out: it may speak of other callers' (other tenants')
inputs.  A lone caller's answer is its own, as the vendor gave it.

Only the vendor call itself is the vendor's time: each caller is told when its inputs go
out (``on_sent``, with the call's ``Claim``), and when they are taken back to go again
on a call of their own, so the dispatcher holds the vendor's time-to-answer limit from
then, never the window's wait nor the RPM's.  One call has one outcome for the vendor's
health whatever it carried: the caller to report it is the one that wins its ``Claim``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from agents.adapters.base import VendorCall, VendorResult
from agents.adapters.http import scrubbed
from schemas.errors import (
    RelayError,
    VendorBadRequest,
    VendorError,
    VendorRequestTooLarge,
    VendorUnavailable,
)
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
# Told of a shared call whose outcome none of its callers hears as its own (a 400 or an
# answer that could not be split: they go again), to report it for the vendor's health
# once: when the call began (``time.perf_counter``) and what became of it.
Reported = Callable[[float, RelayError], Awaitable[None]]


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

# Top-level fields of a shared answer that say the same of every caller's part: the
# call's own.  Any other (but per-prompt lists, cut by caller) is left out of the parts.
WHOLE_CALL = frozenset({"id", "object", "created", "model", "system_fingerprint", "service_tier"})
# Request fields a 400 may blame on one caller's inputs rather than on a parameter every
# caller of the window shares (content filtering blames ``prompt`` for any endpoint).
INPUT_FIELDS = frozenset({"input", "prompt", "messages"})


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
    reported: Reported | None = None

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
    key: tuple[str, ...] | None = None  # its place in the batcher's windows, while it takes
    rank: int | None = None  # while it waits for the RPM: the lane it waits in, by ``rank``

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
    """Collects calls per key (vendor, model, params) and flushes on size or age.

    ``rank`` orders callers' ``ticket``s by urgency (lower: more urgent); a window
    waiting for the RPM takes no caller more urgent than the lane it waits in."""

    def __init__(self, rank: Callable[[Any], int] | None = None) -> None:
        self.rank = rank
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
        reported: Reported | None = None,
    ) -> VendorResult:
        """The caller's own answers; ``shared`` says whether others rode the same call.

        A caller that gives up (its deadline) before the window goes out (while it is open,
        or waiting on ``admit``) leaves it: its inputs are not sent.  One that gives up
        after is ``orphaned``: told the future of the share it will be billed for (also
        of a call answered but not split back, before it goes again alone).  The
        window's call waits on the ``admit`` of the caller that closes it, told every
        caller's ``ticket``; ``on_sent`` is told when the caller's inputs go out;
        ``reported`` (one caller's) reports a shared call none of its callers hears."""
        raw = call.body.get(shape.inputs)
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        # Text and token-array inputs never share a call: vendors refuse a mixed list.
        key = (*key, "text" if all(isinstance(i, str) for i in inputs) else "tokens")
        tokens = sum(_tokens(i) for i in inputs)
        pending = _Pending(call, inputs, ticket, tokens=tokens, on_sent=on_sent, orphaned=orphaned)
        pending.reported = reported
        cap = min(max_size, shape.max_inputs or max_size)
        opened = self._windows.get(key)
        if opened is not None and self._outranks(ticket, opened):
            self._shut(opened)  # it goes on waiting in its lane; this caller, in its own
        elif opened is not None and not opened.takes(pending, cap, shape):
            self._close(key, send, shape, admit)  # it goes as it is; this caller, in the next
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(key=key)
        pending.carrier = window
        window.join(pending)
        if window.full(cap, shape):
            self._close(key, send, shape, admit)
        elif window.task is None and window.timer is None:  # (one waiting has had its time)
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
                    self._shut(carrier)  # nobody joins a wait given up
                    carrier.task.cancel()  # nobody left to send for: no RPM spent on it
            else:
                pending.left = True
                # Retrieved here whoever else reads it, so asyncio never complains of an
                # exception nobody read (the worker stopping, say).
                pending.future.add_done_callback(_retrieve)
                if orphaned is not None:
                    orphaned(pending.future)
            raise

    def _outranks(self, ticket: Any, window: _Window) -> bool:
        """Whether a caller of ``ticket`` is more urgent than the lane ``window`` waits in."""
        return self.rank is not None and window.rank is not None and self.rank(ticket) < window.rank

    def _flush(
        self, key: tuple[str, ...], send: EmbedFn, shape: Shape, admit: Admit | None = None
    ) -> None:
        """``key``'s window has had its time: it goes, once ``admit`` lets it, and takes
        callers while it waits (one that closed to them would queue for the RPM with the
        callers of its own time alone, and every window after it too)."""
        window = self._windows.get(key)
        if window is None or window.task is not None:
            return
        if admit is None or not window.pending:
            self._windows.pop(key)  # nothing to wait for, or nobody to send
        if window.pending:
            self._start(window, send, shape, admit)

    def _close(
        self, key: tuple[str, ...], send: EmbedFn, shape: Shape, admit: Admit | None = None
    ) -> None:
        """``key``'s window takes nobody more (full, or the next caller would overfill
        it): it goes as it is, or goes on waiting for the RPM."""
        window = self._windows.pop(key, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.pending and window.task is None:
            self._start(window, send, shape, admit)

    def _shut(self, window: _Window) -> None:
        """``window`` takes nobody more (it goes out, or its wait was given up)."""
        if window.key is not None and self._windows.get(window.key) is window:
            del self._windows[window.key]

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
            asked = list(window.pending)
            if self.rank is not None:
                window.rank = min(self.rank(p.ticket) for p in asked)
            try:
                await admit([p.ticket for p in asked])
            except RelayError as err:  # our own limits: nothing went out
                self._shut(window)
                # Refused by the time its first callers had: those who joined it while it
                # waited may have longer, and wait again on a window of their own.
                later = [p for p in window.pending if p not in asked]
                _reject(window, asked, partial(_clone, err))
                if later:
                    await self._again([later], send, shape, admit)
                return
            finally:
                self._shut(window)  # it goes (or was stopped): nobody joins it now
        batch = list(window.pending)  # those still waiting: the others left meanwhile
        if not batch:
            return
        for p in batch:
            p.going(window)  # from here the vendor's time to answer runs
        first = batch[0].call
        if len(batch) == 1:
            # Its own request, as it came: a server that takes no list prompt (Ollama's
            # /v1/completions) answers it as it would unbatched.
            body = first.body
        else:
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
        started = time.perf_counter()
        try:
            result = await send(call)
        except RelayError as err:
            # Struck of the key the shared call went with: the others' own keys may differ,
            # and each caller's dispatcher strikes only its own.
            scrubbed(err, call.api_key)
            if len(batch) > 1 and _anyones(err, shape):
                # One caller's input may be what the vendor refused (or made the call too
                # large for it): the callers go again in halves, so only that caller gets
                # the 400 or 413 (and nobody sees another's input, nor fails for another
                # tenant's), in a few calls of the vendor's RPM rather than one each.
                await _report(window, batch, started, err)
                await self._again(_halves(batch), send, shape, admit)
                return
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
                # cause: they go again in halves, and only an answer that still does not
                # match its inputs fails, as the vendor's.  The vendor failed this call.
                failed = VendorUnavailable("a batched answer did not match its inputs")
                await _report(window, batch, started, failed)
                await self._again(_halves(batch), send, shape, admit)
                return
            what = type(exc).__name__
            _reject(window, batch, partial(VendorError, f"unreadable batched answer ({what})"))
            return
        for p, part in zip(batch, parts, strict=True):
            if not p.future.done():
                # (a caller that left has its share here: its outcome is nobody's)
                rode = p.left or not window.claim()
                p.future.set_result(replace(part, shared=len(batch) > 1, rode=rode))

    async def _again(
        self,
        groups: list[list[_Pending]],
        send: EmbedFn,
        shape: Shape,
        admit: Admit | None,
    ) -> None:
        """Each group of callers on a call of its own (each one call of the vendor's
        RPM).  A caller that left meanwhile is sent no more."""
        calls = []
        for group in groups:
            carrier = _Window()
            for p in group:
                if p.left:  # the shared call was refused, unbilled: nothing is sent for it now
                    p.future.cancel()
                if p.future.done():
                    continue
                carrier.join(p)
                p.carrier = carrier
                p.going(None)  # waiting again (for the RPM): our own time, not the vendor's
            if carrier.pending:
                self._start(carrier, send, shape, admit)
                assert carrier.task is not None
                calls.append(carrier.task)
        await asyncio.gather(*calls, return_exceptions=True)


def _anyones(err: RelayError, shape: Shape) -> bool:
    """Whether a shared call's refusal may be one caller's doing (or the merge's): a 413,
    or a 400 naming no field or the inputs.  One naming another parameter is every
    caller's alike: they asked the same (it is in the window's key)."""
    if isinstance(err, VendorRequestTooLarge):
        return True
    if not isinstance(err, VendorBadRequest):
        return False
    if err.param is None:
        return True
    field = re.split(r"[.\[]", err.param, maxsplit=1)[0]
    return field == shape.inputs or field in INPUT_FIELDS


def _halves(batch: list[_Pending]) -> list[list[_Pending]]:
    """``batch``'s callers in two calls (each caller whole, in order)."""
    middle = (len(batch) + 1) // 2
    return [batch[:middle], batch[middle:]]


async def _report(window: _Window, batch: list[_Pending], started: float, err: RelayError) -> None:
    """Report ``window``'s call (one outcome) through one of its callers, unless one of
    them already did (cut from it by the vendor's time limit, say): its callers go
    again, and none will hear this call's outcome as its own."""
    if not window.claim():
        return
    for p in batch:
        if p.reported is not None:
            with contextlib.suppress(Exception):  # metrics never fail the callers
                await p.reported(started, err)
            return


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
    the items of earlier ones.  An answer to one caller is its own, as the vendor gave it;
    the parts of a shared one carry only the top-level fields that are each caller's
    (``_own_fields``)."""
    items = sorted(result.body.get(shape.outputs, []), key=lambda d: d.get("index", 0))
    sizes = [len(own) for own in inputs]
    indices = [d.get("index") for d in items]
    if indices != list(range(sum(sizes))) or any(isinstance(i, bool) for i in indices):
        raise Mismatched(f"{len(items)} answers for {sum(sizes)} inputs, or not indexed 0..n-1")
    if len(inputs) == 1:
        return [result]
    parts, starts, start = [], [], 0
    for size in sizes:
        parts.append([{**d, "index": i} for i, d in enumerate(items[start : start + size])])
        starts.append(start)
        start += size
    weights = [sum(_size(x) for x in own) for own in inputs]
    answered = [sum(len(str(d.get("text") or "")) for d in part) for part in parts]
    usage = result.usage
    tins = _shares(usage.input_tokens, weights)
    touts = _shares(usage.output_tokens, answered if any(answered) else sizes)
    cached = _shares(usage.cache_read_tokens, weights)
    out = []
    for part, first, tin, tout, hit in zip(parts, starts, tins, touts, cached, strict=True):
        body = {**_own_fields(result.body, first, len(part)), shape.outputs: part}
        body["usage"] = {"prompt_tokens": tin, "total_tokens": tin + tout}
        if shape is COMPLETIONS:
            body["usage"]["completion_tokens"] = tout
        own = Usage(input_tokens=tin, output_tokens=tout, cache_read_tokens=hit)
        out.append(VendorResult(body, own))
    return out


def _own_fields(body: dict[str, Any], start: int, size: int) -> dict[str, Any]:
    """The top-level fields of a shared answer that belong to the caller of inputs
    ``start`` to ``start + size``: the whole call's (``WHOLE_CALL``), and its own
    entries of a per-prompt list (Azure's ``prompt_filter_results``: each entry's
    ``prompt_index`` counts the merged call's prompts), renumbered from 0.  Any other
    field is left out: a vendor's extra field may describe every caller's inputs."""
    own: dict[str, Any] = {}
    for name, value in body.items():
        if name in WHOLE_CALL:
            own[name] = value
        elif _per_prompt(value):
            own[name] = [
                {**entry, "prompt_index": entry["prompt_index"] - start}
                for entry in value
                if start <= entry["prompt_index"] < start + size
            ]
    return own


def _per_prompt(value: Any) -> bool:
    """Whether ``value`` is a list with an entry per prompt, each naming its prompt."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(entry, dict)
            and isinstance(entry.get("prompt_index"), int)
            and not isinstance(entry.get("prompt_index"), bool)
            for entry in value
        )
    )


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
