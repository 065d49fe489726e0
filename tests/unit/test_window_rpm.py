"""Window batching under the vendor's RPM, callers arriving one by one: the window waiting
for the next request of the RPM takes the callers who come meanwhile, so each vendor call
carries what arrived while the one before it waited (a window closed to them queued with
one caller, and so did every window after it: no request saved, most callers 429)."""

from __future__ import annotations

import asyncio

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
