"""Flood folding: the first event at once, identical ones counted, one line per window."""

from __future__ import annotations

import asyncio

from gateway.audit import AuditTrail
from schemas.envelope import AuditEvent
from tables.folding import Folder


def test_the_first_passes_and_identical_ones_are_counted_until_the_window_closes() -> None:
    folder: Folder[str] = Folder(window_s=10)
    assert folder.offer("k", "first", 0.0) is None
    assert [folder.offer("k", f"again {i}", 1.0 + i) for i in range(5)] == [10.0] * 5
    assert folder.due(9.9) == []
    assert folder.next_close() == 10.0
    [closed] = folder.due(10.0)
    assert (closed.first, closed.count, closed.overflow) == ("first", 5, False)
    assert folder.due(11.0) == [], "each window is reported once"
    assert folder.offer("k", "next flood", 11.0) is None, "a new window after the last"


def test_a_lone_event_leaves_nothing_to_report() -> None:
    folder: Folder[str] = Folder(window_s=1)
    assert folder.offer("k", "once", 0.0) is None
    assert folder.next_close() is None
    assert folder.due(5.0) == []


def test_different_events_fold_apart() -> None:
    folder: Folder[str] = Folder(window_s=10)
    assert folder.offer("a", "a1", 0.0) is None and folder.offer("b", "b1", 0.0) is None
    assert folder.offer("a", "a2", 1.0) is not None
    assert folder.offer("b", "b2", 2.0) and folder.offer("b", "b3", 3.0)
    assert sorted((f.first, f.count) for f in folder.due(10.0)) == [("a1", 1), ("b1", 2)]


def test_a_late_event_closes_the_expired_window_before_opening_its_own() -> None:
    folder: Folder[str] = Folder(window_s=1)
    folder.offer("k", "first", 0.0)
    folder.offer("k", "folded", 0.5)
    assert folder.offer("k", "after", 1.5) is None
    [closed] = folder.due(1.5)
    assert (closed.first, closed.count) == ("first", 1)


def test_too_many_sources_fold_per_group_not_all_together() -> None:
    folder: Folder[str] = Folder(window_s=10, max_open=2)
    assert folder.offer("a", "a", 0.0) is None and folder.offer("b", "b", 0.0) is None
    assert folder.offer("c", "anon-1", 0.0, group="anonymous") is None
    assert all(folder.offer(f"x{i}", "x", 1.0, group="anonymous") for i in range(100))
    assert folder.offer("t", "tenant", 1.0, group="tenant-t") is None, "kept apart"
    overflow = {f.first: (f.count, f.overflow) for f in folder.due(20.0)}
    assert overflow == {"anon-1": (100, True)}


def test_a_clock_stepping_back_cannot_wedge_the_windows() -> None:
    folder: Folder[str] = Folder(window_s=10)
    folder.offer("a", "a", 50.0)
    folder.offer("b", "b", 40.0)  # the clock stepped back: held at 50
    folder.offer("a", "a2", 55.0)
    folder.offer("b", "b2", 55.0)
    assert sorted(f.first for f in folder.due(60.0)) == ["a", "b"]
    assert folder.next_close() is None


def refusal(i: int) -> AuditEvent:
    return AuditEvent(
        kind="auth_failed",
        role="gateway",
        instance="gw",
        client="10.0.0.7",
        path="/v1/chat/completions",
        detail="unknown relay key",
        key_fingerprint=f"{i:012x}",
    )


async def test_the_trail_reports_each_window_when_it_closes_and_the_rest_on_close() -> None:
    sent: list[AuditEvent] = []

    async def send(event: AuditEvent) -> None:
        sent.append(event)

    trail = AuditTrail(send, window_s=0.05)
    for i in range(10):
        await trail.record(refusal(i))
    assert [e.repeats for e in sent] == [1]
    await asyncio.sleep(0.1)
    assert [e.repeats for e in sent] == [1, 9], "reported once the window closed"
    assert sent[1].key_fingerprint is None and sent[1].client == "10.0.0.7"
    await trail.record(refusal(10))
    await trail.record(refusal(11))
    await trail.close()
    assert [e.repeats for e in sent] == [1, 9, 1, 1], "a stopping gateway reports what it holds"


async def test_refusals_on_made_up_paths_fold_as_one_source() -> None:
    """Anyone can send every try to a new path: the path must not make each refusal a
    line of its own (the audit topic is kept 400 days); the summary keeps the first."""
    sent: list[AuditEvent] = []

    async def send(event: AuditEvent) -> None:
        sent.append(event)

    trail = AuditTrail(send, window_s=60)
    for i in range(500):
        await trail.record(refusal(i).model_copy(update={"path": f"/v1/chat/completions/{i}"}))
    await trail.close()
    assert [e.repeats for e in sent] == [1, 499]
    assert sent[1].path == "/v1/chat/completions/0"


async def test_a_host_trying_keys_from_every_address_of_its_64_folds_as_one_source() -> None:
    """The throttle counts an IPv6 host by its /64, and so must the audit: a fresh source
    address for every try (trivial on Linux) must not make every 401 and 429 a line of
    its own.  The real routes, from 300 addresses in one /64 and 300 in another."""
    import httpx

    from tests.support.gateway import FakeBus, gateway_app

    sent: list[AuditEvent] = []

    async def send(event: AuditEvent) -> None:
        sent.append(event)

    trail = AuditTrail(send, window_s=60)

    class Audited(FakeBus):
        async def audit(self, kind: str, **fields: object) -> None:
            await trail.record(AuditEvent(kind=kind, role="gateway", instance="g", **fields))  # type: ignore[arg-type]

    app, _ = gateway_app()
    app.state.relay.bus = Audited()
    statuses: dict[int, int] = {}
    for net in ("2001:db8:1:2", "2001:db8:1:3"):
        for i in range(1, 301):
            transport = httpx.ASGITransport(
                app=app, raise_app_exceptions=False, client=(f"{net}:{i:x}::{i:x}", 1)
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://relay") as http:
                reply = await http.get("/v1/models", headers={"x-api-key": f"rk-guess-{i}"})
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
    await trail.close()
    assert statuses == {401: 60, 429: 540}, "each /64 is throttled as one client"
    lines = {(e.client, e.detail, e.repeats) for e in sent}
    assert lines == {
        ("2001:db8:1:2:1::1", "unknown relay key", 1),  # the first line: its exact address
        ("2001:db8:1:2::/64", "unknown relay key", 29),  # the rest of the window: the /64
        ("2001:db8:1:2:1f::1f", "too many refused keys", 1),
        ("2001:db8:1:2::/64", "too many refused keys", 269),
        ("2001:db8:1:3:1::1", "unknown relay key", 1),
        ("2001:db8:1:3::/64", "unknown relay key", 29),
        ("2001:db8:1:3:1f::1f", "too many refused keys", 1),
        ("2001:db8:1:3::/64", "too many refused keys", 269),
    }
    assert len(sent) == 8
