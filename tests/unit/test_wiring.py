"""Pure helpers of the worker's wiring: ledger lines to spend, tenants to partitions, a
stopping worker's last answers."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from agents.adapters.base import VendorResult
from schemas.config import Candidate
from schemas.errors import DeadlineExceeded
from streams.wiring import finish, ledger_partition, spend_by_tenant
from tables.budgets import Spend, add_spend
from tests.unit.test_handler import envelope, make, vendor


def test_a_tenants_spend_lives_in_the_partition_of_its_ledger_lines() -> None:
    partitions = list(range(4))
    for tenant in ("demo", "acme", "tenant-42", "ünïcode"):
        expected = DefaultPartitioner()(tenant.encode(), partitions, partitions)
        assert ledger_partition(tenant, 4) == expected


def test_spend_sums_cost_per_tenant_and_skips_what_does_not_parse() -> None:
    lines = [
        orjson.dumps({"tenant": "a", "cost": 0.5, "ts_ms": 1000}),
        orjson.dumps({"tenant": "b", "cost": 0.25, "ts_ms": 3000}),
        orjson.dumps({"tenant": "a", "cost": 1.0, "ts_ms": 2000}),
        orjson.dumps({"tenant": "a", "cost": 0, "ts_ms": 9000}),  # free: no spend, no time
        b"not json",
        orjson.dumps({"cost": 3.0}),
    ]
    assert spend_by_tenant(lines) == [("a", 1.5, 2.0), ("b", 0.25, 3.0)]


def test_spend_of_one_batch_is_never_summed_across_midnight() -> None:
    """$5 just before a month ends and $1 just after must not open the new month at $6."""
    jan31 = 1_706_745_599.9  # 2024-01-31T23:59:59.9Z
    lines = [
        orjson.dumps({"tenant": "a", "cost": 5.0, "ts_ms": jan31 * 1000}),
        orjson.dumps({"tenant": "a", "cost": 1.0, "ts_ms": (jan31 + 0.2) * 1000}),
    ]
    spent = Spend()
    for tenant, cost, at in spend_by_tenant(lines):
        assert tenant == "a"
        spent = add_spend(spent, cost, at, "month")
    assert spent.spent_usd == 1.0


def test_a_line_stamped_ahead_counts_now_and_never_switches_a_budget_off() -> None:
    """One line a month ahead (or in microseconds) must not move the tenant's period on
    and leave every rightly stamped line looking late."""
    import time

    now = time.time()
    ahead = [
        orjson.dumps({"tenant": "a", "cost": 0.01, "ts_ms": (now + 31 * 86400) * 1000}),
        orjson.dumps({"tenant": "a", "cost": 0.01, "ts_ms": now * 1_000_000}),
        orjson.dumps({"tenant": "a", "cost": 0.5, "ts_ms": -5}),  # before 1970: skipped
    ]
    spent = Spend()
    for _, cost, at in spend_by_tenant(ahead):
        assert at <= time.time()
        spent = add_spend(spent, cost, at, "month")
    for _, cost, at in spend_by_tenant(
        [orjson.dumps({"tenant": "a", "cost": 20.0, "ts_ms": now * 1000})]
    ):
        spent = add_spend(spent, cost, at, "month")
    assert spent.spent_usd == pytest.approx(20.02)


def test_the_workers_shares_of_a_rate_limit_add_up_to_the_limit() -> None:
    """3 requests a minute across 4 workers: each refills at 0.75 a minute, not at 1."""
    from schemas.config import RelayConfig
    from streams.wiring import make_gate

    config = RelayConfig.model_validate(
        {
            "vendors": {"v": {"kind": "openai", "base_url": "http://v/v1", "rpm": 3, "tpm": 10}},
            "models": {"m": {"candidates": [{"vendor": "v", "model": "x"}]}},
            "tenants": {"t": {}},
        }
    )
    gate = make_gate(config, workers=4)
    buckets = gate._buckets
    assert buckets["vendor:v"].refill_per_s * 60 * 4 == 3
    assert abs(buckets["vendor-tpm:v"].refill_per_s * 60 * 4 - 10) < 1e-9


def test_a_ledger_line_sent_twice_is_spent_once() -> None:
    """A producer's retry (or a service posting twice) repeats the event id: spend it once,
    in this batch or a later one."""
    from tables.recent import RecentIds

    line = orjson.dumps({"event_id": "e1", "tenant": "a", "cost": 0.5, "ts_ms": 1000})
    other = orjson.dumps({"event_id": "e2", "tenant": "a", "cost": 0.25, "ts_ms": 2000})
    recent = RecentIds(10)
    assert spend_by_tenant([line, line, other], recent) == [("a", 0.75, 2.0)]
    assert spend_by_tenant([other, line], recent) == []


def test_recent_ids_forget_the_oldest_first() -> None:
    from tables.recent import RecentIds

    recent = RecentIds(2)
    assert [recent.first_time(i) for i in ("a", "b", "a", "c", "a", "b")] == [
        True,
        True,
        False,
        True,
        True,  # "a" was the oldest when "c" came, so it was forgotten
        True,  # and "a" coming back pushed "b" out
    ]


def test_ledger_lines_read_again_by_the_next_worker_are_not_spent_twice() -> None:
    """A worker that dies after writing the spend table but before committing leaves its
    lines to be read again by the next one (whose memory of event ids is empty): the
    tenant's spend remembers the last line it folded, and those lines add nothing."""
    from types import SimpleNamespace

    from streams.wiring import unfolded
    from tables.budgets import Spend, add_spend

    def event(tenant: str, offset: int, cost: float) -> SimpleNamespace:
        value = orjson.dumps({"event_id": f"e{offset}", "tenant": tenant, "cost": cost,
                              "ts_ms": 1000 + offset})  # fmt: skip
        message = SimpleNamespace(partition=3, offset=offset)
        return SimpleNamespace(key=tenant.encode(), value=value, message=message)

    table: dict[str, Spend] = {}

    def fold(events: list[SimpleNamespace]) -> None:  # the spend agent's step, a new worker's
        fresh, last = unfolded(events, lambda t: table.get(t, Spend()))
        for tenant, cost, at in spend_by_tenant(fresh):
            added = add_spend(table.get(tenant, Spend()), cost, at, "month")
            table[tenant] = added.model_copy(update={"folded": last[tenant]})

    first = [event("a", 10, 5.0), event("a", 11, 5.0), event("b", 12, 1.0)]
    fold(first)
    fold(first)  # read again after the crash
    fold([*first, event("a", 13, 2.5)])  # and on, with a new line
    assert (table["a"].spent_usd, table["b"].spent_usd) == (12.5, 1.0)
    assert table["a"].folded == (3, 13)
    assert Spend.model_validate(table["a"].model_dump(mode="json")).folded == (3, 13)


def in_(seconds: float) -> int:
    return int((time.time() + seconds) * 1000)


async def test_a_stopping_worker_answers_a_follower_run_again_after_the_requests_it_took():
    """The leader's 0.1 s deadline cuts the shared call; the follower, with 30 s left,
    is run again on a task of the handler's own, which the stop waits for like the
    agent's: it is answered and metered before the producer closes."""
    calls: list[str] = []
    handler, sink = make(vendor(calls, delay=0.3))
    hasty = envelope(key="shared", deadline_ms=in_(0.1))
    patient = envelope(key="shared", deadline_ms=in_(30))
    taken = {asyncio.create_task(handler.handle(e)) for e in (hasty, patient)}
    await asyncio.sleep(0.01)  # both taken: then the worker is told to stop
    await finish(lambda: taken | handler.spawned, set(), drain_s=5)
    assert sink.for_(hasty.correlation_id)[-1].kind == "error"
    assert sink.for_(patient.correlation_id)[-1].kind == "final"
    assert sorted(line.trace_id for line in sink.ledger) == sorted(
        [hasty.trace_id, patient.trace_id]
    )


async def test_a_follower_run_again_still_running_after_the_drain_is_cut_and_metered():
    calls: list[str] = []
    handler, sink = make(vendor(calls, delay=10))
    hasty = envelope(key="shared", deadline_ms=in_(0.1))
    patient = envelope(key="shared", deadline_ms=in_(30))
    taken = {asyncio.create_task(handler.handle(e)) for e in (hasty, patient)}
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await finish(lambda: taken | handler.spawned, set(), drain_s=0.3, answer_s=2)
    assert time.monotonic() - started < 1.5
    error = sink.for_(patient.correlation_id)[-1].error
    assert error is not None and error["code"] == "no_worker"
    [line] = [line for line in sink.ledger if line.trace_id == patient.trace_id]
    assert line.error_code == "no_worker"
    assert not handler.spawned


async def test_a_late_share_line_still_waiting_at_the_cut_is_written():
    """A request that gave up inside a window-batched call waits for the vendor's answer
    to be billed its share; cut at the stop, its one ledger line is written then."""
    handler, sink = make(vendor([]))
    env = envelope(key="late")
    share: asyncio.Future[VendorResult] = asyncio.get_running_loop().create_future()
    late = [(Candidate(vendor="a", model="cheap"), share)]
    await handler._fail(env, DeadlineExceeded("cut"), late=late)
    await finish(lambda: handler.spawned, set(), drain_s=0.05, answer_s=1)
    [line] = sink.ledger
    assert (line.trace_id, line.error_code) == (env.trace_id, "deadline_exceeded")


def test_an_id_taken_from_recent_ids_is_forgotten() -> None:
    from tables.recent import RecentIds

    recent = RecentIds(2)
    recent.first_time(("t", "r1"))
    assert recent.take(("t", "r1")) and not recent.take(("t", "r1"))
    assert not recent.take(("t", "never"))
