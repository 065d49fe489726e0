"""The dispatch step: call the planned candidates in turn until one answers.

Falls back to the next candidate on a retryable error, only before the first streamed
chunk that says something (after that the client has seen text and a switch would garble
it; the role-only chunks a stream opens with are held back until then).  Every attempt
is reported as a ``HealthEvent``.  Retries back off with jitter and honour Retry-After,
all within the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from agents.adapters.base import (
    ChatVendor,
    CompletionVendor,
    EmbeddingVendor,
    TokenCounter,
    VendorCall,
    VendorResult,
)
from agents.adapters.http import SENT, scrubbed
from agents.batcher import COMPLETIONS, EMBEDDINGS, Claim, EmbeddingBatcher, EmbedFn, Sent, Shape
from agents.keys import KeyPool
from agents.meter import Billed, added
from schemas.config import Batching, Candidate
from schemas.envelope import HealthEvent, RequestEnvelope
from schemas.errors import (
    BadRequest,
    BatchCancelled,
    DeadlineExceeded,
    NoHealthyVendor,
    RateLimited,
    RelayError,
    VendorAuthFailed,
    VendorRateLimited,
    VendorUnavailable,
)
from schemas.formats.anthropic import opening_usage
from schemas.formats.openai import answer_chars, assemble_chunks
from schemas.usage import Usage, estimated_tokens, prompt_chars
from tables.buckets import LANES, PriorityGate
from tables.prices import cost_of

log = logging.getLogger("relay.worker")
ChunkSink = Callable[[dict[str, Any]], Awaitable[None]]
# What reading a vendor answer of an unexpected shape raises (transport failures are the
# adapters' own VendorErrors): a missing key, a wrong type, bad JSON, an undecodable body.
UNREADABLE = (LookupError, TypeError, ValueError, AttributeError, httpx.DecodingError)
HealthSink = Callable[[HealthEvent], Awaitable[None]]
# A share of a window-batched call its request gave up on: the candidate, and the answer.
Late = tuple[Candidate, asyncio.Future[VendorResult]]
# Asked before each vendor attempt of a request that may be withdrawn meanwhile (a Batch
# API line whose batch was cancelled): True, and it is not sent.
Withdrawn = Callable[[], Awaitable[bool]]
# Gives back the half-open probe a call took (``Router.release``) when the health table
# will never hear of that call: nothing else would free it before ``open_s``.
Release = Callable[[Candidate], None]
KEY_REFUSED_S = 300.0  # a key a vendor refused (401/403) sits out this long


class MayCall(Protocol):
    """The router's word on calling a candidate now (``Router.may_call``): its breaker
    read again, and whether a probe of one not closed is this worker's to send.  Asked
    with ``spend`` false before a candidate's gate (a look), then with it true once the
    gate let the call through, just before it goes (the probe is the call's)."""

    def __call__(self, cand: Candidate, *, spend: bool = True) -> bool: ...


class _Passed(Exception):
    """The router said no just before the call, after the gate let it through: its
    breaker opened meanwhile, or another request took the probe.  Nothing went out."""


@dataclass
class _Heard:
    """Whether an attempt's call was let through by the router (``may_call``: it may
    have taken a probe) and whether the health table hears of it (reported by the
    attempt, or by the first caller of a window-batched call it rode).  Let through and
    never heard of (stopped, refused by our own gate, withdrawn), it gives back the probe
    it may have taken."""

    asked: bool = False
    heard: bool = False


# Unless a vendor sets its own timeout_s, it has this share of the time left to begin
# answering while another candidate could take over: a hang leaves that one a quarter.
SPARE_SHARE = 0.75
# ...when that share is this long at least, so a short deadline is not split in calls
# that would each be too slow.  A stream that has not begun to answer in it has failed
# (its health, its breaker hear of it), not merely met a client's short deadline.
HANG_S = 30.0
# An unstreamed call is judged on its whole answer, which a healthy vendor may take
# longer than HANG_S to give (a long generation): one cut at a share shorter than this
# came from the client's own short deadline, and says nothing of the vendor's health.
# A minute: a vendor that answers within it is never blamed, whatever deadlines its
# clients set, and one that hangs is still counted by the requests that keep the
# default 120 s deadline (a 90 s share, clearing a minute with room for the time a
# request spends before its first call: the hops, the gate, a first candidate's failure).
HANG_WHOLE_S = 60.0
WITHDRAWN = "the batch was cancelled before this line was sent"
# What an adapter's own time limit (httpx's: the connect, each read) is, for a vendor
# without its own ``timeout_s``: the call's window (below) cuts it at its time to begin or
# the deadline, which may move later (``Deadline``) than when the call went out.
OPEN_READ_S = 3600.0


class Deadline:
    """Until when (epoch seconds) a request's vendor calls may run, read afresh at each
    step: its own deadline (``of``), or, for a call several requests share (coalescing,
    see the handler), the latest deadline of those still waiting for it, which moves as
    they come and go.  It bounds the gates' waits (as it stands when a wait begins),
    the retries, the fallbacks and each call's time to begin; the call under way
    follows it when told it ``moved``: a later one gives it more time, an earlier one
    (the latest waiter gone) cuts it sooner."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self._followers: list[Callable[[], None]] = []

    @classmethod
    def of(cls, env: RequestEnvelope) -> Deadline:
        """``env``'s own deadline, which never moves."""
        return cls(lambda: env.deadline_ms / 1000)

    def __call__(self) -> float:
        return self._read()

    def moved(self) -> None:
        """It may have moved: the call under way sets its time limit again."""
        for follow in list(self._followers):
            follow()

    @contextmanager
    def followed(self, follow: Callable[[], None]) -> Iterator[None]:
        """``follow`` is told each move while the block runs (a call's time limit)."""
        self._followers.append(follow)
        try:
            yield
        finally:
            self._followers.remove(follow)


@dataclass
class Outcome:
    """What a request got: the answer (or error) and which candidate gave it."""

    candidate: Candidate | None = None
    body: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    error: RelayError | None = None
    attempts: int = 0
    batched: bool = False
    cached: bool = False  # answered from L2 on the worker, no vendor call
    # Shares of window-batched calls the request was cut from after its inputs went out
    # (a vendor that had not answered within its begin limit, the deadline): billed all
    # the same, whether the request then failed or another candidate answered it.  Each
    # is the candidate and that share's answer to come; the ledger line adds them up.
    late: list[Late] = field(default_factory=list)
    # Other calls the request made that went out and were cut before they answered (see
    # ``Progress.cut``): billed at an estimate on its one line (``usage_event``'s
    # ``cut``), whether it then failed or another candidate answered.
    cut: list[Billed] = field(default_factory=list)
    stopped: bool = False  # cut by the worker's stop before it was answered

    def spent(self) -> Usage:
        """Every token the request's calls are billed: its answer's (or, failed, the
        call its line names) and the cut calls'."""
        return added((used for _, used in self.cut), self.usage)


@dataclass
class Progress:
    """How far a request's vendor calls got, kept by the caller of ``run``: should the
    call be cancelled (the worker stopping, every client gone), the ledger still says
    which vendors were paid for what."""

    candidate: Candidate | None = None  # the candidate whose stream forwarded text
    chars: int = 0  # characters of answer forwarded
    # The candidate whose stream is open but has said nothing yet (its opening chunks
    # held back): cut by the deadline or a stop, the vendor still bills the prompt.
    opened: Candidate | None = None
    # Calls that went out (an unstreamed call sent, a stream the vendor opened) and were
    # cut before they said anything: by a begin limit, the deadline or a stop, or an
    # opened stream that broke.  The vendor bills each its prompt all the same, so each
    # is billed so (as its vendor counted it, see ``said``, else at an estimate) whatever
    # came next: another candidate's answer too.
    cut: list[Billed] = field(default_factory=list)
    # What the vendor of the stream under way (``opened``, then ``candidate``) counted of
    # its prompt as the stream opened, before any answer (Anthropic's message_start: its
    # input, cache reads and cache writes); None from a vendor that counts at the end only.
    said: Usage | None = None

    def used(self, body: dict[str, Any], chars: int) -> Usage:
        """What the stream under way is billed, cut with ``chars`` characters of answer:
        its prompt as its vendor counted it when it said (a cached prompt at the cached
        price), else at an estimate; its answer at an estimate."""
        guess = Usage.estimated(body, chars)
        if self.said is None:
            return guess
        return self.said.model_copy(update={"output_tokens": guess.output_tokens})

    def cut_off(self, cand: Candidate, body: dict[str, Any]) -> Usage:
        """``cand``'s call went out and was cut before it said anything: kept to be
        billed its prompt (as its vendor counted it, else at an estimate), and no longer
        the stream under way."""
        used = self.used(body, 0) if self.opened == cand else Usage.estimated(body, 0)
        self.cut.append((cand, used))
        if self.opened == cand:
            self.opened, self.said = None, None
        return used

    def bill(self, out: Outcome, body: dict[str, Any]) -> Outcome:
        """``out``, which no candidate answered, charged for what its calls cost (see
        ``used``, ``cut_off``): the stream under way (what it forwarded, or a stream
        opened still silent) and the calls cut before it.  Its line names the last of
        them (a stream broken part way: the vendor that sent it) and adds the others
        (``Outcome.cut``); as it is when there were none."""
        billed = list(self.cut)
        if (who := self.candidate or self.opened) is not None:
            billed.append((who, self.used(body, self.chars)))
        if billed:
            (out.candidate, out.usage), out.cut = billed[-1], billed[:-1]
        return out


def begin_limit(adapter: object, remaining: float, spare: bool) -> float:
    """How long a vendor may take to begin answering, of the ``remaining`` seconds: its
    own ``timeout_s``; unset, three quarters of them when a ``spare`` candidate could
    take over and that is ``HANG_S`` at least (a vendor that hangs leaves the spare
    time to answer), else all of them (a cut call may be billed all the same: a short
    deadline is not shared out between calls that would each be too slow)."""
    own = _own_timeout(adapter)
    if own is not None:
        return min(float(own), remaining)
    share = remaining * SPARE_SHARE
    return share if spare and share >= HANG_S else remaining


def read_limit(adapter: object, remaining: float) -> float:
    """An adapter's own time limit for a call (httpx's, on its connect and each read)
    with ``remaining`` seconds to its deadline: the vendor's own ``timeout_s``, which
    holds each silence in the answer too; else none short of the call's window, which
    cuts it at its time to begin (a share of the deadline, or all of it) and follows the
    deadline should it move later (``Deadline``): a share fixed here would cut the call
    at the deadline it began with, as a vendor's failure, unbilled."""
    own = _own_timeout(adapter)
    if own is not None:
        return float(own)
    return max(remaining, OPEN_READ_S)


def hung(adapter: object, limit: float, *, streamed: bool) -> bool:
    """Whether a vendor cut at ``limit`` seconds (short of the deadline) before it began
    to answer has failed, for its health and its breaker: ``limit`` was its own
    ``timeout_s`` (the operator's figure), or a share of the deadline long enough that no
    healthy vendor takes it (``HANG_S`` to a stream's first content, ``HANG_WHOLE_S`` to a
    whole answer).  A shorter share was set by one client's deadline: counting it would
    let that client open the breaker for everyone."""
    if _own_timeout(adapter) is not None:
        return True
    return limit >= (HANG_S if streamed else HANG_WHOLE_S)


def _own_timeout(adapter: object) -> float | None:
    """A vendor's own ``timeout_s`` (its config's), if the operator set one."""
    return getattr(getattr(adapter, "config", None), "timeout_s", None)


class Dispatcher:
    def __init__(
        self,
        adapters: Mapping[str, object],
        pools: dict[str, KeyPool],
        on_health: HealthSink,
        *,
        batching: dict[str, Batching] | None = None,
        gate: PriorityGate | None = None,
        max_rounds: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        self.adapters = adapters
        self.pools = pools
        self.on_health = on_health
        self.batching = batching or {}
        self.batcher = EmbeddingBatcher(rank=lambda ticket: LANES[ticket[0]])
        # Requests that gave up inside a window-batched call already sent, by correlation
        # id: their candidate and the share they will be billed for.
        self._orphans: dict[str, list[Late]] = {}
        self.gate = gate or PriorityGate()
        self.max_rounds = max_rounds
        self.rng = rng or random.Random()

    def counts(self, vendor: str) -> bool:
        """Whether ``vendor`` can count a prompt's tokens (Anthropic's ``count_tokens``)."""
        return isinstance(self.adapters.get(vendor), TokenCounter)

    async def run(
        self,
        env: RequestEnvelope,
        plan: list[Candidate],
        on_chunk: ChunkSink | None,
        *,
        vendor_wait_s: float | None = None,
        admit_tenant: bool = True,
        settle_tenant: bool | None = None,
        progress: Progress | None = None,
        may_call: MayCall | None = None,
        withdrawn: Withdrawn | None = None,
        release: Release | None = None,
        deadline: Deadline | None = None,
    ) -> Outcome:
        """Try the plan (up to ``max_rounds`` passes) before the envelope's deadline, or
        ``deadline`` when given (a call its waiters share: the latest of theirs).

        ``vendor_wait_s`` caps the wait for a vendor's rate limits (not the tenant's):
        past it that candidate is skipped, and when every one was, the outcome is our
        ``RateLimited`` — which the handler may answer by routing cheaper, in a second
        run with ``admit_tenant`` false: the tenant's TPM estimate then stays taken until
        that run settles it (``settle_tenant``; by default a run settles what it
        admitted).  ``may_call`` is asked before each candidate's gate and again once
        the gate let it through, just before it is called: a breaker that opened while
        the request waited at the gate or between rounds is not called, and the router's
        half-open probes are spent by calls, not by plans; ``release`` gives a probe back
        when its call ends unheard by the health table (stopped, refused by our own gate
        for a window-batched call, withdrawn), and a token count, which reports no
        outcome, asks neither.  ``withdrawn``, given
        for a Batch API line only (the realtime path awaits nothing more), is asked once
        the tenant's gate has let the request through, before each vendor's gate and
        again before each attempt: a line may wait at the gates and between retries for
        hours, its batch cancelled meanwhile; then the outcome is ``BatchCancelled`` and
        nothing more is sent."""
        out = Outcome()
        until = deadline or Deadline.of(env)
        if env.endpoint == "count_tokens":  # only vendors that count can answer it
            plan = [c for c in plan if self.counts(c.vendor)]
            may_call = None  # its own endpoint, no outcome reported: it spends no probe
        if admit_tenant and plan:  # once per request, not again when the handler re-plans it
            await self._admit(env, until, [f"tenant:{env.tenant}"], [f"tenant-tpm:{env.tenant}"])
        try:
            if not plan:
                out.error = NoHealthyVendor(
                    f"no healthy vendor for `{env.alias}`; try again shortly"
                )
                # (a re-plan's first run may have paid for calls cut before it)
                return progress.bill(out, env.body) if progress else out
            return await self._run(
                env,
                until,
                plan,
                on_chunk,
                out,
                vendor_wait_s,
                progress,
                may_call,
                withdrawn,
                release,
            )
        finally:
            # Kept whatever the outcome: a share of a call that went out is billed even when
            # another candidate answered the request after (the handler meters both).
            out.late.extend(self._orphans.pop(env.correlation_id, ()))
            replanned = vendor_wait_s is not None and isinstance(out.error, RateLimited)
            admitted = admit_tenant and bool(plan)
            settle = admitted if settle_tenant is None else settle_tenant
            if settle and not replanned:  # settled once: what was not used goes back
                billed = out
                if out.candidate is None and progress is not None:
                    # Cut (a stop, every client gone): what its calls cost, as the line bills
                    billed = progress.bill(Outcome(), env.body)
                self._settle(env, f"tenant-tpm:{env.tenant}", billed.spent())

    async def _run(
        self,
        env: RequestEnvelope,
        until: Deadline,
        plan: list[Candidate],
        on_chunk: ChunkSink | None,
        out: Outcome,
        vendor_wait_s: float | None,
        progress: Progress | None,
        may_call: MayCall | None,
        withdrawn: Withdrawn | None = None,
        release: Release | None = None,
    ) -> Outcome:
        sent_any = False

        streamed = progress if progress is not None else Progress()

        async def forward(chunk: dict[str, Any]) -> None:
            nonlocal sent_any
            sent_any = True
            streamed.candidate = cand  # the candidate being tried (the loop's, below)
            streamed.chars += answer_chars(chunk)
            if on_chunk is not None:
                await on_chunk(chunk)

        last: RelayError | None = None
        # A candidate passed over: its breaker opened since the plan, or its probe went
        # with another request.
        passed = False
        held = [0.0] * len(plan)  # when each candidate's vendor said it may be called again
        errs: list[RelayError | None] = [None] * len(plan)  # each one's last error
        for round_no in range(self.max_rounds):
            skipped = [False] * len(plan)  # passed over this round (a breaker, a probe)
            for i, cand in enumerate(plan):
                if until() - time.time() <= 0:
                    # Still waiting on our own limits when the time ran out (the last
                    # attempt is the one that ran into it): that is a 429 with Retry-After,
                    # whichever candidate came next.
                    out.error = (
                        last
                        if isinstance(last, RateLimited)
                        else DeadlineExceeded("the request's deadline passed before an answer")
                    )
                    return streamed.bill(out, env.body)
                if held[i] > time.time():
                    continue  # its Retry-After has not passed: not called again yet
                if may_call is not None and not may_call(cand, spend=False):
                    passed = skipped[i] = True
                    continue  # not worth a wait at its gate
                out.attempts += 1
                # Another candidate that could take over if this one hangs.
                spare = any(h != math.inf for j, h in enumerate(held) if j != i)
                told = _Heard()
                try:
                    result = await self._attempt(
                        env,
                        until,
                        cand,
                        forward,
                        vendor_wait_s,
                        streamed,
                        spare=spare,
                        withdrawn=withdrawn,
                        may_call=may_call,
                        told=told,
                    )
                except _Passed:
                    out.attempts -= 1  # nothing was called
                    passed = skipped[i] = True
                    continue
                except RateLimited as err:
                    # Our own bucket: another candidate may have room; this one has none
                    # before the wait it named.
                    last = errs[i] = err
                    held[i] = max(held[i], time.time() + (err.retry_after or 0.0))
                    continue
                except RelayError as err:
                    last = errs[i] = err
                    if err.retry_after:
                        held[i] = time.time() + err.retry_after
                    if isinstance(err, VendorRateLimited):
                        # Every key of its pool is sitting out (it tried each free one):
                        # none is called again, next round, before the first is back, so a
                        # 429 without Retry-After is not answered by a call 50 ms later.
                        held[i] = max(held[i], time.time() + self.pools[cand.vendor].wait())
                    if err.final_for_candidate:
                        held[i] = math.inf  # it would say the same again: not next round
                    if not err.retryable or sent_any:
                        out.error = err
                        # A stream that broke part way: the vendor bills what it sent.
                        return streamed.bill(out, env.body)
                    continue
                finally:
                    if told.asked and not told.heard and release is not None:
                        release(cand)
                out.candidate, out.body, out.usage = cand, result.body, result.usage
                out.batched = result.shared
                out.cut = list(streamed.cut)  # calls cut before it: billed on its line too
                return out
            if last is None and out.attempts == 0 and passed:
                # Planned as the probe another request sent first, or to a breaker that
                # opened since: nothing was called, so say at once what a request planned
                # a moment later hears, not "every candidate failed" after backing off.
                out.error = NoHealthyVendor(
                    "every vendor for this model is failing or rate-limited; try again shortly",
                    retry_after=1.0,
                )
                return streamed.bill(out, env.body)  # (a re-plan's first run's cut calls)
            deadline = until()
            if all(
                skipped[j] or held[j] >= deadline or isinstance(errs[j], RateLimited)
                for j in range(len(plan))
            ):
                # Every candidate is held past the deadline (its vendor's Retry-After, its
                # benched keys, ruled out), refused by our own bucket (its wait past the
                # deadline, or the alias's patience), or passed over: say so now, not
                # later.  Whatever the plan's order: one candidate's full bucket never
                # keeps another's retryable failure from its retry.
                break
            if round_no + 1 < self.max_rounds:
                await self._backoff(until, round_no, min(held))
        out.error = _verdict(held, errs, last)
        return streamed.bill(out, env.body)

    async def _admit(
        self,
        env: RequestEnvelope,
        until: Deadline,
        rpm: list[str],
        tpm: list[str],
        cap_s: float | None = None,
    ) -> None:
        """Wait in the request's priority lane until the buckets allow, or 429 if the
        deadline (as it stands now; or the ``cap_s`` from now, if sooner) cannot be met."""
        deadline = _gate_deadline(until(), cap_s)
        limited = [key for key in tpm if self.gate.bucket(key) is not None]
        tokens = _estimate(env) if limited else 0
        needs = {key: 1.0 for key in rpm} | {key: float(tokens) for key in limited if tokens}
        await self.gate.acquire(needs, env.priority, deadline)

    def _windowed(self, env: RequestEnvelope) -> bool:
        """Whether ``env``'s vendor call goes through the window batcher (then the
        window's one call takes the vendor's RPM, not each of its callers)."""
        return (
            env.endpoint in ("embeddings", "completions")
            and env.alias in self.batching
            and not _several(env.body)
        )

    def _window_admit(self, vendor: str) -> Callable[[list[Any]], Awaitable[None]]:
        """How a window-batched call to ``vendor`` waits for the vendor's RPM: one request
        for the whole call, in the most urgent lane of its callers' (a realtime caller
        never waits behind batch work for riding with it) and until the latest of their
        deadlines (a caller who cannot wait that long gives up on its own, and leaves the
        window if it has not gone out yet).  Each ticket is a caller's (priority, deadline
        on the gate's clock), from ``_batched``."""

        async def admit(tickets: list[Any]) -> None:
            lane = min((t[0] for t in tickets), key=LANES.__getitem__)
            deadline = max(t[1] for t in tickets)
            await self.gate.acquire({f"vendor:{vendor}": 1.0}, lane, deadline)

        return admit

    def _settle(self, env: RequestEnvelope, key: str, used: Usage) -> None:
        """Square a TPM bucket with what the call used: what the request's estimate took
        beyond that goes back, what it used beyond the estimate is charged."""
        if self.gate.bucket(key) is not None:  # no estimate on the hot path without limits
            self.gate.settle(key, _estimate(env), used.input_tokens + used.output_tokens)

    async def _backoff(self, until: Deadline, round_no: int, free_at: float) -> None:
        """Jittered exponential backoff, and no sooner than a candidate may be called."""
        delay = self.rng.uniform(0.05, 0.2) * (2**round_no)
        delay = max(delay, free_at - time.time())
        remaining = until() - time.time()
        await asyncio.sleep(max(0.0, min(delay, remaining - 0.05)))

    async def _attempt(
        self,
        env: RequestEnvelope,
        until: Deadline,
        cand: Candidate,
        forward: ChunkSink,
        wait_s: float | None = None,
        progress: Progress | None = None,
        *,
        spare: bool = False,
        withdrawn: Withdrawn | None = None,
        may_call: MayCall | None = None,
        told: _Heard | None = None,
    ) -> VendorResult:
        adapter = self.adapters[cand.vendor]
        pool = self.pools[cand.vendor]
        if withdrawn is not None and await withdrawn():  # spends none of the vendor's limits
            raise BatchCancelled(WITHDRAWN)
        # The vendor's RPM is taken per vendor call: here, for a call of this request's
        # own; for a window-batched one, once by the window's call as it goes out (see
        # ``_window_admit``), or one RPM per caller would let one caller at a time into
        # windows that are then sent alone.  Tokens are every caller's own: taken here.
        windowed = self._windowed(env)
        rpm = [] if windowed else [f"vendor:{cand.vendor}"]
        tpm = f"vendor-tpm:{cand.vendor}"
        await self._admit(env, until, rpm, [tpm], cap_s=wait_s)
        told = told or _Heard()
        try:
            if withdrawn is not None and await withdrawn():
                raise BatchCancelled(WITHDRAWN)
            if may_call is not None and not may_call(cand):
                raise _Passed
        except BaseException:  # withdrawn, passed over or stopped: nothing went out
            self._settle(env, tpm, Usage())
            for key in rpm:
                self.gate.settle(key, 1.0, 0.0)
            raise
        told.asked = may_call is not None  # the call may be a probe: this one's to send
        forwarded = False
        window: asyncio.Timeout | None = None
        # A window-batched call goes out when its window does, after the window's wait and
        # the vendor's RPM (the relay's own): until then only the deadline bounds it, and a
        # caller cut there was never sent (no vendor outcome); from then the vendor's time
        # to begin answering runs, as for a call of its own.  ``shared`` is the call's
        # claim to its one outcome once this caller's inputs went out on it.
        shared: Claim | None = None
        waiting = False  # inside the call's time limit (``window`` may be moved)
        # Each call's, below: its time to begin answering (``limit``) of what the deadline
        # left it (``remaining``) when the vendor's time began (``began``, epoch seconds).
        limit = remaining = began = started = 0.0

        def fit() -> None:
            """Set the call's window where it ends now (the deadline may have moved, its
            waiters changed): at the deadline once the answer has begun (the vendor's
            time then bounds each silence in it) or while a window-batched call has not
            gone out, else at the vendor's time to begin, of what the deadline leaves."""
            nonlocal limit, remaining
            if not waiting or window is None or window.expired():
                return  # cut meanwhile, or not yet in it
            end = until()
            if not forwarded and not (windowed and shared is None):
                remaining = end - began
                limit = begin_limit(adapter, remaining, spare)
                end = began + limit
            window.reschedule(asyncio.get_running_loop().time() + max(end - time.time(), 0.0))

        async def counted(chunk: dict[str, Any]) -> None:
            nonlocal forwarded
            if not forwarded:
                forwarded = True  # the answer has begun: from here the deadline bounds it
                fit()
            await forward(chunk)

        def sending(claim: Claim | None) -> None:
            """The window's call took this caller's inputs out (``claim``), or gave
            them back to go again alone (None): the vendor's time from now, or the
            deadline's only again."""
            nonlocal shared, began, started
            if not waiting or window is None or window.expired():
                return  # cut meanwhile: its caller leaves as one never sent
            shared = claim
            if claim is not None:
                began, started = time.time(), time.perf_counter()
            fit()

        tried: set[int] = set()  # keys this attempt used: each one call at most
        spared: set[int] = set()  # keys given back once: a shared call went with another's
        while True:
            if tried and withdrawn is not None:  # another key's turn: asked again
                try:
                    if await withdrawn():
                        raise BatchCancelled(WITHDRAWN)
                except BaseException:  # admitted, never sent: the estimate goes back
                    self._settle(env, tpm, Usage())
                    raise
            began = time.time()
            remaining = until() - began
            key_index, key = pool.pick(skip=tried)
            tried.add(key_index)
            # The vendor's time to begin answering (a stream's first content, a whole
            # answer otherwise), taken as a whole: pings and keep-alives do not stretch
            # it.  Past it the next candidate is tried, and the vendor is counted as
            # failed when it hung (``hung``: not when a share of one client's short
            # deadline cut it).  The request's deadline coming first is not the
            # vendor's fault: the client asked for an answer sooner than this vendor gives
            # one, which says nothing of its health; it is reported as
            # ``deadline_exceeded``, which the metrics count and the breaker leaves be
            # (one tenant's short deadlines never open a breaker for everyone).
            # A deadline that moves (``Deadline``: a waiter with a later one joined the
            # call, the latest one left) moves that time with it while the call runs.
            limit = begin_limit(adapter, remaining, spare)
            own = limit if windowed else read_limit(adapter, remaining)
            call = VendorCall(model=cand.model, body=env.body, api_key=key, timeout_s=own)
            started = time.perf_counter()
            shared = None

            SENT.set(False)
            try:
                with until.followed(fit):
                    async with asyncio.timeout(remaining if windowed else limit) as window:
                        waiting = True
                        try:
                            result = await self._call(
                                adapter,
                                env,
                                cand,
                                call,
                                counted,
                                progress,
                                wait_s=wait_s,
                                sent=sending,
                                until=until,
                            )
                        finally:
                            waiting = False
            except asyncio.CancelledError:
                # Stopped (every client of the stream gone, or the worker stopping): a call
                # that went out is billed all the same, and the vendor's tokens are
                # squared with what it is billed, as the line bills it.
                self._settle(env, tpm, _cut(env, cand, progress, forwarded))
                raise
            except TimeoutError:
                if windowed and shared is None:
                    # Its deadline passed in the window or its wait for the vendor's RPM:
                    # our own limits, nothing sent, the vendor's health not in question.
                    self._settle(env, tpm, Usage())
                    raise DeadlineExceeded(
                        "the request's deadline passed before its batched call went out "
                        f"({remaining:.1f}s)"
                    ) from None
                _cut(env, cand, progress, forwarded)  # billed even when another answers
                cut: RelayError
                blame: RelayError
                if forwarded or limit >= remaining:
                    cut = DeadlineExceeded(
                        f"no answer from the vendor within the deadline ({remaining:.1f}s)"
                    )
                    blame = cut
                else:
                    # Cut to leave the next candidate time: that one is tried (a
                    # retryable error), and the vendor is blamed only when it hung.
                    cut = VendorUnavailable(f"{cand.vendor}: no answer began in {limit:.1f}s")
                    streamed = env.stream and env.endpoint == "chat"
                    blame = (
                        cut
                        if hung(adapter, limit, streamed=streamed)
                        else DeadlineExceeded(
                            f"{cand.vendor}: no answer in {limit:.1f}s, its share of the "
                            "request's deadline"
                        )
                    )
                told.heard = True
                # A window-batched call: its one outcome, reported by one of its callers.
                # One cut by its vendor's limit says the call failed, unless another
                # already said what became of it; one cut by its own deadline says so
                # only as the last of them (the call goes on for the others).
                failed = isinstance(blame, VendorUnavailable)
                if shared is None or shared(last=not failed):
                    await self._report(env, cand, started, blame)
                raise cut from None
            except RelayError as exc:
                scrubbed(exc, key)
                if exc.refused and progress is not None:
                    # The vendor did not take the call: unbilled.
                    progress.opened, progress.said = None, None
                elif env.stream and progress is not None and progress.opened == cand:
                    # Opened, then broken before it said anything (a dropped connection):
                    # billed its prompt, whether or not the next candidate answers.
                    _cut(env, cand, progress, forwarded)
                if isinstance(exc, RateLimited):
                    # Our own gate, for the window's call: nothing went out, nothing to
                    # report; the next candidate may have room.
                    self._settle(env, tpm, Usage())
                    raise
                keyed = isinstance(exc, VendorAuthFailed | VendorRateLimited)
                if exc.other_key:
                    # A window-batched call that went with another caller's key: this
                    # caller's own never went out, so it is not spent (its owner benches
                    # the one that failed), and this caller tries again with its own —
                    # once per key, so windows that keep going with others' failing keys
                    # cannot keep it going round.
                    if key_index not in spared:
                        spared.add(key_index)
                        tried.discard(key_index)
                elif isinstance(exc, VendorAuthFailed):
                    # A revoked key, or one out of credit: the operator must hear of it
                    # (by its place in the pool, never the key).
                    log.warning("%s: key #%d refused (a 401/403, or a bad-key 400): out for %.0f s",
                                cand.vendor, key_index, KEY_REFUSED_S)  # fmt: skip
                    pool.bench(key_index, KEY_REFUSED_S)
                elif isinstance(exc, VendorRateLimited):
                    log.info("%s: key #%d rate-limited: out for %.1f s", cand.vendor, key_index,
                             exc.retry_after or 1.0)  # fmt: skip
                    pool.bench(key_index, exc.retry_after or 1.0)
                if keyed and not forwarded and pool.free(skip=tried):
                    # That key's refusal or limit, not the model's: a key of the pool not
                    # tried yet gets the call (once the vendor's RPM lets another go),
                    # and the model's health is not in question.
                    try:
                        await self._admit(env, until, rpm, [], cap_s=wait_s)
                    except BaseException:  # stopped, or no room in time: nothing was used
                        self._settle(env, tpm, Usage())
                        raise
                    continue
                if not forwarded:
                    self._settle(env, tpm, Usage())  # refused: nothing was used
                told.heard = True  # here, or by the window's first caller when it rode
                if not exc.rode:  # a window-batched call's failure: reported once
                    await self._report(env, cand, started, exc)
                raise
            except UNREADABLE as exc:
                what = type(exc).__name__  # its text may quote the vendor's answer
                if not SENT.get():
                    # Before anything went out: the request has a shape the adapter could
                    # not translate (a number for a list, say).  The client's fault, not
                    # the vendor's: a 400, and no breaker opened by a bad request.
                    self._settle(env, tpm, Usage())
                    log.info("%s: a request not put to it (%s)", cand.vendor, what)
                    raise BadRequest(
                        f"the request could not be put to {cand.vendor} (a field of a type "
                        "or shape its API does not take); check its fields' types"
                    ) from None
                # An answer in a shape no adapter reads (not JSON, a list for an object,
                # a body that will not decode): the vendor's failure, reported, and the
                # next candidate tried, rather than an internal error for the client.
                log.warning("%s/%s sent an unreadable answer (%s)", cand.vendor, cand.model, what)
                if env.stream and progress is not None and progress.opened == cand:
                    _cut(env, cand, progress, forwarded)  # opened: billed, as above
                err = VendorUnavailable(
                    f"{cand.vendor}: the vendor's answer could not be read (not in the shape "
                    "its API documents)"
                )
                told.heard = True
                await self._report(env, cand, started, err)
                raise err from None
            self._settle(env, tpm, result.usage)
            told.heard = True  # here, or by the window's first caller when it rode
            if not result.rode:  # a window-batched call: one call, one outcome
                await self._report(env, cand, started, None, cost_of(cand, result.usage))
            return result

    async def _call(
        self,
        adapter: object,
        env: RequestEnvelope,
        cand: Candidate,
        call: VendorCall,
        forward: ChunkSink,
        progress: Progress | None = None,
        *,
        wait_s: float | None = None,
        sent: Sent | None = None,
        until: Deadline | None = None,
    ) -> VendorResult:
        if env.endpoint == "count_tokens" and isinstance(adapter, TokenCounter):
            counted = await adapter.count_tokens(call)
            return VendorResult(body={"input_tokens": counted}, usage=Usage())  # free
        if env.endpoint == "embeddings":
            if not isinstance(adapter, EmbeddingVendor):
                raise BadRequest(f"`{env.alias}` is served by a vendor without embeddings")
            return await self._batched(
                env, cand, call, adapter.embed, EMBEDDINGS, wait_s, sent, until
            )
        if env.endpoint == "completions":
            if not isinstance(adapter, CompletionVendor):
                raise BadRequest(f"`{env.alias}` is served by a vendor without /completions")
            return await self._batched(
                env, cand, call, adapter.complete, COMPLETIONS, wait_s, sent, until
            )
        if not isinstance(adapter, ChatVendor):
            raise BadRequest(f"`{env.alias}` is served by a vendor without chat")
        if not env.stream:
            return await adapter.chat(call)
        chunks: list[dict[str, Any]] = []
        usage = Usage()
        held = 0  # leading chunks of nothing (a role, an empty text) not yet forwarded
        if progress is not None:
            progress.said = None  # this call's vendor has counted nothing yet
        async for item in adapter.stream(call):
            if progress is not None:  # the vendor took the call: it bills the prompt now
                progress.opened = cand
            if isinstance(item, Usage):
                usage = item
                continue
            if progress is not None and (said := opening_usage(item)) is not None:
                progress.said = said  # a cut from here bills the prompt the vendor counted
            item["model"] = env.alias
            chunks.append(item)
            if held == len(chunks) - 1 and hollow(item):
                # Until the vendor has said something, an error (Anthropic's overloaded
                # event right after message_start, say) is as good as an error status:
                # nothing has reached the client, and the next candidate may answer.
                held += 1
                continue
            for early in chunks[:held]:
                await forward(early)
            held = 0
            await forward(item)
        for early in chunks[:held]:  # an answer of nothing is still an answer
            await forward(early)
        body = assemble_chunks(chunks)
        body["usage"] = usage.to_openai()  # a non-streamed waiter or cache reader needs it
        return VendorResult(body=body, usage=usage)

    async def _batched(
        self,
        env: RequestEnvelope,
        cand: Candidate,
        call: VendorCall,
        send: EmbedFn,
        shape: Shape,
        wait_s: float | None = None,
        sent: Sent | None = None,
        until: Deadline | None = None,
    ) -> VendorResult:
        """Through the window batcher when the alias asks for it, else straight (the
        request took the vendor's RPM then; through the window, its call takes it).
        ``sent`` is told when the window's call takes the request's inputs out."""
        rule = self.batching.get(env.alias)
        if rule is None or not self._windowed(env):
            # Several answers per prompt come back interleaved by prompt: not split here.
            return await send(call)
        params = {k: v for k, v in env.body.items() if k not in (shape.inputs, "model", "user")}
        vendor = id(getattr(send, "__self__", send))  # one window per adapter instance
        # (The batcher keeps text and token-id inputs apart: it merges the lists.)
        key = (shape.inputs, call.model, repr(sorted(params.items())), str(vendor))

        def orphaned(share: asyncio.Future[VendorResult]) -> None:
            self._orphans.setdefault(env.correlation_id, []).append((cand, share))

        async def reported(started: float, err: RelayError) -> None:
            """A shared call none of its callers hears as its own (they go again): still
            one outcome for the vendor's health and its calls' count."""
            await self._report(env, cand, started, err)

        return await self.batcher.embed(
            key,
            call,
            send,
            rule.window_ms,
            rule.max_size,
            shape,
            orphaned=orphaned,
            admit=self._window_admit(cand.vendor),
            ticket=(env.priority, _gate_deadline((until or Deadline.of(env))(), wait_s)),
            on_sent=sent,
            reported=reported,
        )

    async def _report(
        self,
        env: RequestEnvelope,
        cand: Candidate,
        started: float,
        err: RelayError | None,
        cost: float = 0.0,
    ) -> None:
        if env.endpoint == "count_tokens":
            return  # its own endpoint and limits: says nothing of the model's health
        await self.on_health(
            HealthEvent(
                vendor=cand.vendor,
                model=cand.model,
                ok=err is None,
                latency_ms=(time.perf_counter() - started) * 1000,
                error_code=err.code if err else None,
                retry_after=err.retry_after if err else None,
                cost=cost,
            )
        )


def _verdict(
    held: list[float], errs: list[RelayError | None], last: RelayError | None
) -> RelayError:
    """The error a request no candidate answered ends with, whatever the plan's order.
    When a candidate may be called now, its error says more than a wait: the last such
    one's in the plan (else, one passed over, the last error).  When none may (each
    asked to wait, by its Retry-After, its benched keys or our own bucket, or is ruled
    out), the client hears the soonest of those waits, counted from now: when a retry
    can be served, not the last candidate's longer wait, nor a 502 without any while
    another candidate said when.  It is our own bucket's ``RateLimited`` when one of
    them held a candidate (the handler may route a request it held too long cheaper),
    else the error of the candidate that named that wait."""
    now = time.time()
    if last is None:
        return NoHealthyVendor("every candidate failed")
    said = [(until, err) for until, err in zip(held, errs, strict=True) if err is not None]
    if min(held) <= now:
        free = [err for until, err in said if until <= now]
        return free[-1] if free else last
    waits = [(until, err) for until, err in said if until < math.inf]
    if not waits:
        return last  # every candidate ruled out: the last one's reason
    until, err = min(waits, key=lambda w: w[0])
    ours = [e for _, e in said if isinstance(e, RateLimited)]
    chosen = ours[0] if ours else err
    chosen.retry_after = max(0.0, until - now)
    return chosen


def _cut(
    env: RequestEnvelope, cand: Candidate, progress: Progress | None, forwarded: bool
) -> Usage:
    """What ``cand``'s call, cut (a begin limit, the deadline, a stop) or broken, is
    billed (at an estimate), kept on ``progress`` when it is one of the request's cut
    calls.  A stream that forwarded text is the stream under way (``Progress.bill``
    charges it).  One that said nothing is billed its prompt once it went out: a stream
    the vendor opened (the README's rule for streams), an unstreamed call sent (the vendor
    goes on with it, and bills it).  Nothing otherwise: a stream not yet opened, a call
    not sent, a token count (free), a window-batched call (its share is metered as
    ``Outcome.late``: it went out on the window's own task, which ``SENT`` does not
    reach from here)."""
    if progress is None or env.endpoint == "count_tokens":
        return Usage()
    if forwarded:
        return progress.used(env.body, progress.chars)
    streamed = env.stream and env.endpoint == "chat"
    if progress.opened == cand if streamed else SENT.get():
        return progress.cut_off(cand, env.body)
    return Usage()


def hollow(chunk: dict[str, Any]) -> bool:
    """Whether a stream chunk says nothing yet: no text, tool call, refusal, finish
    reason or usage (the role-only chunk every stream opens with)."""
    if chunk.get("usage"):
        return False
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("finish_reason"):
            return False
        delta = choice.get("delta") or {}
        if any(value for name, value in delta.items() if name != "role"):
            return False
    return True


def _several(body: dict[str, Any]) -> bool:
    """Whether a request asks for several answers per prompt (``n``, ``best_of``)."""
    return any((body.get(k) or 1) != 1 for k in ("n", "best_of"))


def _gate_deadline(deadline: float, cap_s: float | None = None) -> float:
    """Until when, on the gate's clock, a request may wait for rate limits: its
    ``deadline`` (epoch seconds), or ``cap_s`` from now if sooner."""
    remaining = deadline - time.time()
    if cap_s is not None:
        remaining = min(remaining, cap_s)
    return time.monotonic() + remaining


def _estimate(env: RequestEnvelope) -> int:
    """The tokens a request is held to against TPM limits (a token count spends none;
    embeddings spend their input only)."""
    if env.endpoint == "count_tokens":
        return 0
    return estimate_tokens(env.body, completion=env.endpoint != "embeddings")


def estimate_tokens(body: dict[str, Any], *, completion: bool = True) -> int:
    """Tokens a request will spend against a TPM limit, before the vendor counts them:
    about four characters a token of prompt, plus the completion it may ask for."""
    prompt = estimated_tokens(prompt_chars(body))
    if not completion:
        return prompt
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    return prompt + (int(limit) if isinstance(limit, int | float) else 256)
