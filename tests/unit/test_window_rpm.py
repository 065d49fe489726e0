"""Window batching under the vendor's RPM, callers arriving one by one: the window waiting
for the next request of the RPM takes the callers who come meanwhile, so each vendor call
carries what arrived while the one before it waited (a window closed to them queued with
one caller, and so did every window after it: no request saved, most callers 429)."""

from __future__ import annotations

import asyncio
import time

from schemas.envelope import Priority
from tests.unit.test_window_batching import EMB, Embeddings, dispatcher, embed, rpm_gate


async def test_callers_arriving_one_by_one_under_the_rpm_share_the_waiting_window() -> None:
    vendor = Embeddings()
    dispatch, seen = dispatcher(vendor, gate=rpm_gate(60, tokens=0))  # next in a second
    tasks = []
    for i in range(10):  # one caller every 100 ms, each with 3 s to wait
        tasks.append(asyncio.create_task(dispatch.run(embed(f"t{i}", 3), EMB, None)))
        await asyncio.sleep(0.1)
    outs = await asyncio.gather(*tasks)
    assert [o.error for o in outs] == [None] * 10
    assert [len(inputs) for _, _, inputs in vendor.calls] == [10], "one request of the RPM"
    assert [(e.vendor, e.ok) for e in seen] == [("a", True)]
    assert all(o.batched for o in outs)


async def test_a_steady_stream_under_the_rpm_is_a_call_per_request_of_it() -> None:
    """30 callers over 3 s at one request a second: about one call a second, every
    caller answered within its deadline (each window alone: 6 answered, 24 refused)."""
    vendor = Embeddings()
    dispatch, _ = dispatcher(vendor, gate=rpm_gate(60))
    tasks = []
    for i in range(30):
        tasks.append(asyncio.create_task(dispatch.run(embed(f"t{i}", 3), EMB, None)))
        await asyncio.sleep(0.1)
    outs = await asyncio.gather(*tasks)
    assert [o.error for o in outs] == [None] * 30
    assert len(vendor.calls) <= 4
    assert sum(len(inputs) for _, _, inputs in vendor.calls) == 30


async def test_a_realtime_caller_never_joins_a_window_waiting_in_a_less_urgent_lane() -> None:
    """A background window waits for the RPM behind batch work; a realtime caller that
    comes meanwhile opens a window of its own, which waits in the realtime lane: it goes
    first, then the batch work, then the background window."""
    vendor = Embeddings()
    gate = rpm_gate(120, tokens=0)  # the next request in half a second
    dispatch, _ = dispatcher(vendor, gate=gate)
    order: list[str] = []

    async def batch_work() -> None:
        await gate.acquire({"vendor:a": 1.0}, Priority.batch, time.monotonic() + 5)
        order.append("batch")

    async def run(text: str, priority: Priority) -> None:
        out = await dispatch.run(embed(text, 5, priority=priority), EMB, None)
        assert out.error is None
        order.append(text)

    queued = asyncio.create_task(batch_work())
    await asyncio.sleep(0.01)
    background = asyncio.create_task(run("bg", Priority.background))
    await asyncio.sleep(0.15)  # its window has had its time: it waits for the RPM
    await run("rt", Priority.realtime)
    await asyncio.gather(queued, background)
    assert order == ["rt", "batch", "bg"]
    assert [inputs for _, _, inputs in vendor.calls] == [["rt"], ["bg"]]
