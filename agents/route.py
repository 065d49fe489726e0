"""The routing step: order an alias's candidates from the live vendor-health table.

On top of the alias's strategy: a canary share goes to the new version first (sticky per
end user when asked; the other users have it behind the stable ones, as a last resort),
and a degraded request is sent to the cheapest candidates — of the alias's ``degrade_to``
alias when it names one, none dearer than the alias's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Callable
from typing import Any

from schemas.config import Candidate, ModelAlias, RelayConfig, Strategy
from schemas.errors import ModelNotFound, NoHealthyVendor
from tables.health import (
    BreakerPolicy,
    Health,
    available,
    available_at,
    blended_price,
    health_key,
    rank,
    stale_latency,
)

# A request is used to measure a stale candidate's latency again only with this much
# time left: the candidate first gets a spare's share of it, the fallback the rest.
EXPLORE_ROOM_S = 60.0


class Router:
    """Reads health through ``view`` (a Faust table's ``get`` on the worker)."""

    def __init__(
        self,
        config: RelayConfig,
        view: Callable[[str], dict[str, Any] | None],
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.rng = rng or random.Random()
        self.policy = BreakerPolicy(**config.breaker.model_dump())
        self._probes: dict[str, float] = {}  # when this worker last sent a probe, per key
        # Which request's task sent it: while that runs the probe is out (``_probe_out``),
        # and only that one gives it back (``release``).
        self._probers: dict[str, asyncio.Task[Any] | None] = {}
        # When this worker last sent a call to measure a stale latency again, per key.
        self._explored: dict[str, float] = {}

    def healths(self, candidates: list[Candidate]) -> dict[str, Health]:
        out: dict[str, Health] = {}
        for c in candidates:
            key = health_key(c.vendor, c.model)
            raw = self.view(key)
            out[key] = Health.model_validate(raw) if raw else Health()
        return out

    def spec(self, alias: str) -> ModelAlias:
        spec = self.config.models.get(alias)
        if spec is None:
            raise ModelNotFound(f"The model `{alias}` does not exist", param="model")
        return spec

    def plan(
        self,
        alias: str,
        now: float,
        *,
        user: str | None = None,
        degraded: bool = False,
        tenant: str | None = None,
        room_s: float = math.inf,
    ) -> list[Candidate]:
        """Candidates in the order to try them, unavailable ones left out.  Degraded, the
        cheapest first: of ``degrade_to`` when ``tenant`` may use that alias (a tenant held
        to some models, for data residency say, is never sent elsewhere) and no dearer
        than the alias's own cheapest available one, then its own."""
        spec = self.spec(alias)
        if degraded:
            target = (
                spec.degrade_to
                if spec.degrade_to and self.may_use(tenant, spec.degrade_to)
                else None
            )
            # The alias's own, cheapest first: its normal route costs at least the first.
            own = self._available(spec.candidates, "cheapest", now)
            # Of degrade_to's candidates, only those no dearer than that: a cheaper
            # alias's pricey fallback (its quality pick, say) must not make the "cheaper"
            # route dearer than the one it replaces.
            ceiling = _cheapest_priced(own or spec.candidates)
            offered = self.spec(target).candidates if target else []
            cheaper = [c for c in offered if blended_price(c) <= ceiling]
            # The alias's own candidates behind degrade_to's, each cheapest first (not all
            # in one ranking: an unpriced candidate of the alias's own would come first):
            # a cheaper alias that is down must not turn a tenant at 80 % of its budget
            # away while the alias is up.
            return self._or_refuse(
                self._available(cheaper, "cheapest", now) + [c for c in own if c not in cheaper],
                cheaper + [c for c in spec.candidates if c not in cheaper],
                now,
            )
        cands = spec.candidates
        if spec.canary and self.in_canary(alias, spec, user):
            # The canary first while it is available; the stable candidates behind it
            # (and alone, when its breaker is open).
            canary = self._available([spec.canary.candidate], spec.strategy, now, room_s)
            stable = self._available(cands, spec.strategy, now, room_s)
            return self._or_refuse(
                canary + [c for c in stable if c not in canary],
                [spec.canary.candidate, *cands],
                now,
            )
        if spec.canary and spec.canary.percent > 0:
            # The stable candidates, and the canary behind them as a last resort: a
            # request it could answer is not refused (a 503) because every stable
            # candidate is out.  (A canary at 0 % is switched off: it takes nothing.)
            stable = self._available(cands, spec.strategy, now, room_s)
            canary = self._available([spec.canary.candidate], spec.strategy, now, room_s)
            return self._or_refuse(
                stable + [c for c in canary if c not in stable],
                [*cands, spec.canary.candidate],
                now,
            )
        return self._rank(cands, spec.strategy, now, room_s)

    def may_use(self, tenant: str | None, alias: str) -> bool:
        """Whether ``tenant`` may use ``alias`` (a tenant not in the config may: the
        gateway already checked who it is)."""
        rule = self.config.tenants.get(tenant) if tenant is not None else None
        return rule is None or rule.may_use(alias)

    def _rank(
        self, cands: list[Candidate], strategy: Strategy, now: float, room_s: float = math.inf
    ) -> list[Candidate]:
        """Available candidates only; a breaker past its open period lets one probe per
        worker through at a time (``_probe_out``).  None available: 503 with Retry-After,
        and the vendor is spared.  ``room_s``: the time the request has left."""
        return self._or_refuse(self._available(cands, strategy, now, room_s), cands, now)

    def _available(
        self, cands: list[Candidate], strategy: Strategy, now: float, room_s: float = math.inf
    ) -> list[Candidate]:
        healths = self.healths(cands)
        out = []
        for c in rank(cands, healths, strategy, now, self.rng, self.policy):
            key = health_key(c.vendor, c.model)
            h = healths[key]
            if not available(h, self.policy, now):
                continue
            if h.state != "closed" and self._probe_out(key, h, now):
                continue  # this worker's probe is out
            out.append(c)
        if strategy == "latency" and room_s >= EXPLORE_ROOM_S:
            self._explore(out, healths, now, room_s)
        return out

    def _explore(
        self, ranked: list[Candidate], healths: dict[str, Health], now: float, room_s: float
    ) -> None:
        """Put first, for this one plan, a candidate whose latency figure is stale (no
        success in the health window: ranked behind, so unused): once per window per
        worker, so a vendor that became fast is found again at the cost of one request a
        minute, where ranking it as untried sent it every request until its first answer
        was folded.  Only a request with ``room_s`` for it and for the fallback after it
        (three times the stale figure, a minute at least) is used to measure: the client
        of one with a short deadline would pay for the measurement with its answer."""
        for i, c in enumerate(ranked[1:], start=1):
            key = health_key(c.vendor, c.model)
            due = now - self._explored.get(key, -math.inf) >= self.policy.window_s
            slow_s = (healths[key].latency_ewma_ms or 0.0) / 1000
            if due and 3 * slow_s <= room_s and stale_latency(healths[key], now, self.policy):
                self._explored[key] = now
                ranked.insert(0, ranked.pop(i))
                return

    def may_call(self, cand: Candidate, *, spend: bool = True) -> bool:
        """Whether ``cand`` may be called now, asked just before the call (after any wait
        at the rate limits, and again each round): its breaker is read again, as a plan
        may be seconds old and the breaker opened (or a Retry-After came) since; and a
        call to a breaker not closed is a probe, one out per worker at a time.  The call
        spends the probe, so a candidate planned behind one that answers keeps its probe
        for a request that needs it; ``spend`` false only looks."""
        key = health_key(cand.vendor, cand.model)
        raw, now = self.view(key), time.time()
        if _closed_now(raw, now):
            return True  # the usual case, without reading the whole record
        h = Health.model_validate(raw)
        if not available(h, self.policy, now):
            return False
        if h.state == "closed":
            return True
        if self._probe_out(key, h, now):
            return False  # this worker's probe is out, with another request
        if spend:
            self._probes[key] = now
            self._probers[key] = _task()
        return True

    def _probe_out(self, key: str, h: Health, now: float) -> bool:
        """Whether the probe this worker sent to ``key``'s breaker (``h``, not closed) is
        still out: the breaker has not opened again since it went (its outcome, or
        another worker's probe's, is not in), and its request is still running, or it
        went less than ``open_s`` ago.  So a worker has one probe out at a time, however
        long a hanging vendor keeps it (a call may wait 3/4 of a deadline), where a rule
        by time alone let another out every ``open_s``; the time rule stays for the
        moment between a probe's request ending and its outcome being folded in (and a
        caller outside a task)."""
        sent = self._probes.get(key)
        if sent is None:
            return False
        if h.opened_at is None or h.opened_at > sent:
            del self._probes[key], self._probers[key]  # a new open period: a new probe
            return False
        task = self._probers.get(key)
        return now - sent < self.policy.open_s or (task is not None and not task.done())

    def closed(self, cand: Candidate) -> bool:
        """Whether ``cand``'s breaker is closed and no Retry-After holds it: what work
        that reports no outcome (a vendor batch) asks, never spending a probe, and never
        going to a vendor whose probe has not said it is back."""
        return _closed_now(self.view(health_key(cand.vendor, cand.model)), time.time())

    def release(self, cand: Candidate) -> None:
        """Give back the probe of ``cand`` this request's call took, when the health
        table will never hear of that call (stopped, refused by our own gate, withdrawn):
        the breaker would stay open for ``open_s`` more on this worker for no outcome.  A
        probe another request took is not touched, so a call that was not the probe can
        never free a second one."""
        key = health_key(cand.vendor, cand.model)
        task = _task()
        if task is not None and self._probers.get(key) is task:
            del self._probes[key], self._probers[key]

    def _or_refuse(
        self, ranked: list[Candidate], cands: list[Candidate], now: float
    ) -> list[Candidate]:
        if ranked or not cands:
            return ranked
        soonest = min(available_at(h, self.policy) for h in self.healths(cands).values())
        raise NoHealthyVendor(
            "every vendor for this model is failing or rate-limited; try again shortly",
            retry_after=max(1.0, soonest - now),
        )

    def in_canary(self, alias: str, spec: ModelAlias, user: str | None) -> bool:
        """Whether this request goes to the canary: a fixed share of users when sticky."""
        assert spec.canary is not None
        share = spec.canary.percent / 100
        if spec.canary.sticky and user:
            digest = hashlib.sha256(f"{alias}:{user}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < share
        return self.rng.random() < share


def _cheapest_priced(cands: list[Candidate]) -> float:
    """The lowest blended price among ``cands`` that have one (unpriced is unknown, not
    free: it sets no ceiling); infinite when none has."""
    return min((p for c in cands if (p := blended_price(c)) > 0), default=math.inf)


def _closed_now(raw: dict[str, Any] | None, now: float) -> bool:
    """Whether a health record (as the table holds it; None: never heard of) says its
    breaker is closed and no Retry-After holds it: read off the raw record, as the hot
    path asks it for every call."""
    if not raw:
        return True
    return raw.get("state") == "closed" and float(raw.get("retry_after_until") or 0.0) <= now


def _task() -> asyncio.Task[Any] | None:
    """The request's task (None outside an event loop)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
