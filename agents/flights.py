"""In-flight coalescing: identical requests share one vendor call and its stream.

The request topic is keyed by the coalescing key, so every identical request reaches the
same worker, whichever gateway replica took it; this registry is that worker's memory of
calls under way.  A waiter that joins mid-stream gets the chunks so far, then live ones.
A waiter whose client went away (a cancel notice) is ``gone``: sent nothing more; when
no waiter of a flight still waits (each gone, or lost, or given up on by its gateway) its
call is stopped (the handler's job).  Until then the call runs to the latest deadline of
those that still wait (``Flight.deadline``), which moves as they come and go: a follower
is never cut by a leader's shorter deadline.

A stream answered with no ledger line of the worker's (by the clock its gateway had given
up on it and written the line) is remembered a while: a cancel notice for it coming
later says its gateway wrote none (a gateway that withdraws a request never meters it),
and the line is the worker's to write after all.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.envelope import REPLY_GRACE_S, Priority, RequestEnvelope
from schemas.errors import RelayError
from tables.recent import RecentIds

# A flight's priority lane is part of its key, and a request may join a call of its own
# lane or a better one (best first), never a worse one: a call is admitted in its leader's
# lane, where a realtime request would wait behind every queued batch job.  A realtime
# key is as it was, so the common request still takes one look-up.
_LANES = tuple(Priority)
_SUFFIX = {lane: "" if lane is Priority.realtime else f":{lane}" for lane in _LANES}
LEFT_EARLY_REMEMBERED = 10_000  # cancel notices kept for requests not joined yet
UNMETERED_REMEMBERED = 10_000  # streams left to their gateway's line, kept for a late notice
_JOINABLE = {lane: tuple(_SUFFIX[b] for b in _LANES[: i + 1]) for i, lane in enumerate(_LANES)}


@dataclass
class Waiter:
    envelope: RequestEnvelope
    leader: bool
    joined_at: float
    sent: int = 0  # chunks already delivered to this waiter
    # Nothing more is sent to it (a reply to it failed, or it is ``gone``); its line is
    # still kept.
    lost: bool = False
    gone: bool = False  # its client went away (a cancel notice): its line says client_closed
    # It was told its answer failed while the call went on: a chunk of its stream did not
    # reach it (refused, or not taken in time), its stream being of no use with a hole in
    # it; or, a leader, its own deadline passed while the call ran on for later ones.  Its
    # line, when the flight lands, says it failed so.
    broken: RelayError | None = None
    # Held while sending to this waiter, so its chunks (and then its final) go out in order.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def waits(self) -> bool:
        """Whether anything sent to it may still be read: it is not ``lost`` (nor gone),
        nor given up on by its gateway (a follower cut at its own, shorter, deadline: its
        gateway answered 504, metered it, and sends no notice, having nothing to
        withdraw).  One that does not keeps no call going and is sent no more chunks."""
        return not self.lost and not given_up(self.envelope)


def given_up(env: RequestEnvelope) -> bool:
    """Whether ``env``'s gateway has, by the clock, given up on it (past its deadline and
    the grace) and metered it itself; unless its client left first (see ``unmetered``)."""
    return env.gateway_meters_timeout and time.time() > env.deadline_ms / 1000 + REPLY_GRACE_S


@dataclass(frozen=True)
class Unmetered:
    """A stream answered without a ledger line of the worker's (``Flights.unmetered``):
    what its line needs should a cancel notice come for it, its body left out (kept
    small; a line does not read it) and the flight's downgrade folded in."""

    envelope: RequestEnvelope
    coalesced: bool


@dataclass
class Flight:
    key: str
    stream: bool
    waiters: list[Waiter] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0  # waiters (in join order) sent their final reply or error
    finished: bool = False
    cached: bool = False  # answered from L2 rather than by a vendor
    degraded: str | None = None  # routed cheaper for every waiter (rate pressure)
    # The leader found no answer in L2 and calls a vendor: its waiters are not answered
    # from the cache (what a degraded stream's early notice must say rightly).
    flying: bool = False
    # Followers with time left when the leader's own deadline cut the call: run again.
    rerun: list[Waiter] = field(default_factory=list)
    # The vendor call on a task of its own (a stream's, which its clients may all leave),
    # so that it can be stopped; None while it runs on the leader's own task.
    call: asyncio.Future[Any] | None = None
    # Told when ``deadline`` may have moved (a waiter joined or left): the call under way
    # follows it.  Set by the handler while it calls a vendor.
    moved: Callable[[], None] | None = None
    # Armed while the call may outlast its leader's own deadline, to answer the leader then.
    due: asyncio.TimerHandle | None = None
    # ``deadline``'s, in ms: kept as waiters join and leave (``Flights``), so that neither
    # a join nor a look at it goes through every waiter of a much-asked prompt.
    latest_ms: int = 0

    def deadline(self) -> float:
        """Until when its call may run (epoch seconds): the latest deadline of the
        waiters that wait for it (its leader's when none does), reckoned as they join
        and as the one whose deadline it is leaves.  A follower that joins with a later
        one gives the call that much more time, and the leader has its 504 at its own
        (the handler's job); one that leaves, or is lost, or the leader answered 504,
        takes its time away (``Flights.reckon``).  (One given up on by its gateway
        meanwhile counts until then: its deadline is past.)"""
        return (self.latest_ms or self.waiters[0].envelope.deadline_ms) / 1000

    def degraded_for(self, env: RequestEnvelope) -> str | None:
        """Why this waiter's answer was routed cheaper: its own budget, or the flight's."""
        return env.degraded or self.degraded


class Flights:
    """Calls under way, by key.  Pure bookkeeping; delivery is the caller's job."""

    def __init__(self) -> None:
        self._by_key: dict[str, Flight] = {}
        # Who waits on a flight under way, by correlation id: where a cancel notice goes.
        self._by_id: dict[str, tuple[Flight, Waiter]] = {}
        # Notices for requests not waiting on a flight when they came (not joined yet: a
        # degraded stream's notice still going out, a follower about to run again), by
        # (tenant, correlation id); the oldest drop out first.
        self._left_early = RecentIds(LEFT_EARLY_REMEMBERED)
        # Streams answered with no line of the worker's, by (tenant, correlation id).
        # Not a RecentIds: a late notice needs the request itself to write its line.
        self._unmetered: OrderedDict[tuple[str, str], Unmetered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_key)

    @staticmethod
    def _base(env: RequestEnvelope, apart: str = "") -> str:
        # A budget-degraded request flies apart, with its own tenant: its cheaper answer
        # is that tenant's downgrade (to models that tenant may use), not the alias's
        # answer to hand anyone else who asks the same.  One that must not be answered
        # from the cache (refresh, bypass, an answer too old for it) flies apart too: the
        # leader of a flight may be answered from L2.  ``apart`` keeps apart what the
        # caller knows must not share a call (tenants a downgrade may not reach).
        key = f"{env.endpoint}:{env.prompt_hash}{apart}"
        if env.degraded:
            key += f":degraded:{env.tenant}"
        return key if env.cache_lookup else key + ":fresh"

    @classmethod
    def _key(cls, env: RequestEnvelope, apart: str = "") -> str:
        """The key of a flight ``env`` leads: its own lane's."""
        return cls._base(env, apart) + _SUFFIX[env.priority]

    def _open(self, base: str, lane: Priority) -> Flight | None:
        """A call under way that a request of ``lane`` may join: its lane's or a better."""
        for suffix in _JOINABLE[lane]:
            flight = self._by_key.get(base + suffix)
            if flight is not None and not flight.finished:
                return flight
        return None

    def live(self, env: RequestEnvelope, apart: str = "") -> bool:
        """Whether a call for this request's key is under way (one it could join)."""
        return self._open(self._base(env, apart), env.priority) is not None

    def join(self, env: RequestEnvelope, now: float, apart: str = "") -> tuple[Flight, Waiter]:
        """Attach to a flight this request may join, or start one with it as leader."""
        base = self._base(env, apart)
        flight = self._open(base, env.priority)
        if flight is None:
            key = base + _SUFFIX[env.priority]
            flight = Flight(key=key, stream=env.stream)
            self._by_key[key] = flight
            waiter = Waiter(env, leader=True, joined_at=now)
        else:
            waiter = Waiter(env, leader=False, joined_at=now)
        flight.waiters.append(waiter)
        self._by_id[env.correlation_id] = (flight, waiter)
        if env.deadline_ms > flight.latest_ms:
            flight.latest_ms = env.deadline_ms  # the call's deadline now
            if not waiter.leader and flight.moved is not None:
                flight.moved()
        return flight, waiter

    def leave(self, correlation_id: str, tenant: str) -> Flight | None:
        """The client of ``correlation_id`` went away: its waiter is sent nothing more.
        The flight when that left nobody on it who ``waits`` (the caller may stop its
        call), else None; an id not waiting on a flight here (unknown, landed, another
        tenant's, gone already) changes nothing."""
        found = self._by_id.get(correlation_id)
        if found is None:  # (it may join yet: ``left_before`` says so then)
            self._left_early.first_time((tenant, correlation_id))
            return None
        if found[1].envelope.tenant != tenant or found[1].gone:
            return None
        flight, waiter = found
        waiter.gone = waiter.lost = True
        return None if self.reckon(flight) else flight

    def reckon(self, flight: Flight) -> bool:
        """A waiter of ``flight`` stopped reading it (left, lost, answered 504 while the
        call goes on): the call's deadline is the latest of those that still wait (the
        leader's when none does, as a lone leader's call would run), its call told when
        that moved.  Whether anybody still waits (else the caller stops the call)."""
        staying = [w.envelope.deadline_ms for w in flight.waiters if w.waits]
        latest = max(staying, default=flight.waiters[0].envelope.deadline_ms)
        if latest != flight.latest_ms:
            flight.latest_ms = latest
            if flight.moved is not None:
                flight.moved()
        return bool(staying)

    def waiter(self, correlation_id: str) -> tuple[Flight, Waiter] | None:
        """Who waits on a flight under way as ``correlation_id``, and on which, if
        anyone does."""
        return self._by_id.get(correlation_id)

    def left_before(self, env: RequestEnvelope) -> bool:
        """Whether the client of ``env`` went away before it joined a flight (its
        cancel notice came first): it is not to start or join a call."""
        return self._left_early.take((env.tenant, env.correlation_id))

    def unmetered(self, env: RequestEnvelope, *, coalesced: bool, degraded: str | None) -> None:
        """``env``, a stream, is answered without a ledger line of the worker's: by the
        clock its gateway has given up on it and metered it.  Only a clock says so, and a
        gateway whose client left first (it sent a notice) wrote nothing: a notice that
        comes now or later makes the line the worker's (``unmetered_left``)."""
        key = (env.tenant, env.correlation_id)
        update: dict[str, Any] = {"body": {}, "degraded": degraded}
        self._unmetered[key] = Unmetered(env.model_copy(update=update), coalesced)
        self._unmetered.move_to_end(key)
        if len(self._unmetered) > UNMETERED_REMEMBERED:
            self._unmetered.popitem(last=False)

    def unmetered_left(self, correlation_id: str, tenant: str) -> Unmetered | None:
        """The stream of ``correlation_id`` answered without a line of the worker's, now
        that a cancel notice names it (forgotten then: one line); None for any other."""
        return self._unmetered.pop((tenant, correlation_id), None)

    def land(self, flight: Flight) -> None:
        """The call is over: later requests start a new flight (or hit the cache)."""
        flight.finished = True
        if self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        for w in flight.waiters:
            if self._by_id.get(w.envelope.correlation_id, (None,))[0] is flight:
                del self._by_id[w.envelope.correlation_id]
