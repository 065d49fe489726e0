"""The batch-API lane's failure handling, with a scripted vendor batch API."""

from __future__ import annotations

import time
from typing import Any

from agents.adapters.base import VendorCall, VendorResult
from agents.batch_lane import BatchLane
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import Priority, RequestEnvelope
from schemas.errors import RelayError, VendorUnavailable
from schemas.usage import Usage
from tests.support.envelopes import request_envelope

CAND = Candidate(vendor="v", model="m", input_per_1m=1, output_per_1m=1)


class ScriptedBatches:
    """Answers each poll with the next scripted step: an exception to raise, None (still
    running), or "done" (every call answered)."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.calls: list[tuple[str, VendorCall]] = []

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        self.calls = calls
        return "batch_1"

    async def poll_batch(
        self, batch_id: str, api_key: str
    ) -> dict[str, VendorResult | Exception] | None:
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if step is None:
            return None
        return {cid: VendorResult(body={"id": cid}, usage=Usage()) for cid, _ in self.calls}


def envelope() -> RequestEnvelope:
    return request_envelope(
        alias="a", priority=Priority.background, deadline_ms=int((time.time() + 60) * 1000)
    )


async def run(vendor: ScriptedBatches, n: int, fail_for: frozenset[int] = frozenset()) -> list[Any]:
    got: list[Any] = []
    envs = [envelope() for _ in range(n)]

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        if envs.index(env) in fail_for:
            raise RuntimeError("reply topic gone")
        got.append(out)

    lane = BatchLane(
        {"v": vendor}, {"v": KeyPool(["key"])}, LaneRule(max_size=n, poll_s=0.001), deliver
    )
    for env in envs:
        lane.submit(env, CAND)  # the n-th fills the batch and sends it
    for task in list(lane._tasks):
        await task
    return got


async def test_a_poll_failing_for_a_moment_is_tried_again() -> None:
    busy = VendorUnavailable("HTTP 503: busy")
    got = await run(ScriptedBatches([busy, None, busy, "done"]), 3)
    assert len(got) == 3 and all(isinstance(r, VendorResult) for r in got)


async def test_an_unreadable_batch_answers_every_caller_with_an_error() -> None:
    got = await run(ScriptedBatches([KeyError("custom_id")]), 3)
    assert len(got) == 3 and all(isinstance(r, VendorUnavailable) for r in got)


async def test_a_poll_that_keeps_failing_fails_the_batch() -> None:
    got = await run(ScriptedBatches([VendorUnavailable("down")] * 10), 2)
    assert len(got) == 2 and all(isinstance(r, RelayError) for r in got)


async def test_one_failed_delivery_does_not_stop_the_others() -> None:
    got = await run(ScriptedBatches(["done"]), 3, fail_for=frozenset({0}))
    assert len(got) == 2 and all(isinstance(r, VendorResult) for r in got)


async def test_vendor_ids_fit_anthropic_s_pattern_and_each_answer_reaches_its_own_caller() -> None:
    """Batch API lines' correlation ids hold a slash, which Anthropic refuses in a
    custom_id: the lane numbers its requests instead, and maps the answers back."""
    import re

    class Echo(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any]:
            # in reverse, as a vendor may list them
            return {
                cid: VendorResult(body={"prompt": call.body["prompt"]}, usage=Usage())
                for cid, call in reversed(self.calls)
            }

    vendor = Echo([])
    envs = [
        request_envelope(
            alias="a",
            priority=Priority.background,
            correlation_id=f"batch_abc/{i}",
            body={"model": "a", "prompt": f"p{i}"},
        )
        for i in range(3)
    ]
    got: dict[str, Any] = {}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[env.correlation_id] = out.body["prompt"]

    lane = BatchLane(
        {"v": vendor}, {"v": KeyPool(["key"])}, LaneRule(max_size=3, poll_s=0.001), deliver
    )
    for env in envs:
        lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", cid) for cid, _ in vendor.calls)
    assert got == {"batch_abc/0": "p0", "batch_abc/1": "p1", "batch_abc/2": "p2"}


async def test_a_line_cancelled_while_it_waited_never_reaches_the_vendor() -> None:
    from schemas.errors import BatchCancelled

    vendor = ScriptedBatches(["done"])
    envs = [envelope() for _ in range(3)]
    got: dict[str, Any] = {}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[env.correlation_id] = out

    async def cancelled(env: RequestEnvelope) -> bool:
        return env is envs[1]

    lane = BatchLane(
        {"v": vendor},
        {"v": KeyPool(["key"])},
        LaneRule(max_size=3, poll_s=0.001),
        deliver,
        cancelled=cancelled,
    )
    for env in envs:
        lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    assert len(vendor.calls) == 2, "the cancelled line was not sent"
    assert isinstance(got[envs[1].correlation_id], BatchCancelled)
    assert all(isinstance(got[e.correlation_id], VendorResult) for e in (envs[0], envs[2]))
