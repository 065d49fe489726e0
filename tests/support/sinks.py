"""A worker's outputs, kept in memory: what a RequestHandler replied, metered, reported
and cached, for tests that drive one without Kafka or Redis."""

from __future__ import annotations

from schemas.envelope import HealthEvent, ReplyEvent, UsageEvent
from tables.cache import CacheEntry


class Sink:
    def __init__(self) -> None:
        self.replies: list[tuple[str, ReplyEvent]] = []
        self.ledger: list[UsageEvent] = []
        self.outcomes: list[HealthEvent] = []
        self.written: dict[str, CacheEntry] = {}
        self.replaced: list[str] = []  # keys stored in place of what was there
        self.stored: dict[str, CacheEntry] = {}
        self.stale: dict[str, CacheEntry] = {}  # past their TTL, still in L2

    async def reply(self, topic: str, event: ReplyEvent) -> None:
        self.replies.append((topic, event))

    async def usage(self, event: UsageEvent) -> None:
        self.ledger.append(event)

    async def health(self, event: HealthEvent) -> None:
        self.outcomes.append(event)

    async def cache(
        self, key: str, entry: CacheEntry, ttl_s: int, *, replacing: bool = False
    ) -> None:
        self.written[key] = entry
        if replacing:
            self.replaced.append(key)

    async def cached(self, key: str, *, stale_ok: bool = False) -> CacheEntry | None:
        if stale_ok and key in self.stale:
            return self.stale[key]
        return self.stored.get(key)

    def for_(self, cid: str) -> list[ReplyEvent]:
        return [e for _, e in self.replies if e.correlation_id == cid]
