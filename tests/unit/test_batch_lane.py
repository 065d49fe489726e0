"""The batch-API lane's failure handling, with a scripted vendor batch API."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from functools import partial
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agents import batch_lane
from agents.adapters.base import CallsRefused, VendorCall, VendorResult
from agents.batch_lane import BatchLane
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import Priority, RequestEnvelope
from schemas.errors import (
    BadRequest,
    RelayError,
    VendorAnswerUnreadable,
    VendorAuthFailed,
    VendorBadRequest,
    VendorRateLimited,
    VendorUnavailable,
    VendorUnsupported,
)
from schemas.usage import Usage
from tables.lane_journal import VendorBatch
from tests.support.envelopes import request_envelope

CAND = Candidate(vendor="v", model="m", input_per_1m=1, output_per_1m=1)


class ScriptedBatches:
    """Answers each poll with the next scripted step: an exception to raise, None (still
    running), "done" (every call answered), "cancelled" (none ran: the vendor reports
    each as not run, as the adapters do for a cancelled batch) or "first ran" (cancelled
    after the first call ran).  ``cancel_fails`` cancels
    are refused before one is taken."""

    def __init__(self, steps: list[Any], cancel_fails: int = 0) -> None:
        self.steps = steps
        self.calls: list[tuple[str, VendorCall]] = []
        self.cancels: list[str] = []
        self.cancel_fails = cancel_fails

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
        if step == "cancelled":
            return {cid: VendorUnavailable("batch request not run") for cid, _ in self.calls}
        if step == "first ran":  # cancelled after its first call ran
            return {
                cid: VendorResult(body={"id": cid}, usage=Usage(input_tokens=5))
                if n == 0
                else VendorUnavailable("batch request not run")
                for n, (cid, _) in enumerate(self.calls)
            }
        return {cid: VendorResult(body={"id": cid}, usage=Usage()) for cid, _ in self.calls}

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        if self.cancel_fails:
            self.cancel_fails -= 1
            raise VendorUnavailable("HTTP 503: busy")
        self.cancels.append(batch_id)


def envelope(deadline_s: float = 60) -> RequestEnvelope:
    return request_envelope(
        alias="a", priority=Priority.background, deadline_ms=int((time.time() + deadline_s) * 1000)
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


async def test_an_answer_that_stays_unreadable_fails_its_callers_never_sent_again() -> None:
    """The vendor ran the batch (and may have billed it): its callers hear a non-retryable
    error rather than go out again the realtime way at full price."""
    got = await run(ScriptedBatches([KeyError("custom_id")] * batch_lane.POLL_FAILURES), 3)
    assert len(got) == 3 and all(isinstance(r, VendorAnswerUnreadable) for r in got)
    assert not any(r.retryable for r in got)


async def test_an_answer_unreadable_once_is_read_again() -> None:
    got = await run(ScriptedBatches([KeyError("custom_id"), "done"]), 2)
    assert len(got) == 2 and all(isinstance(r, VendorResult) for r in got)


async def test_a_request_missing_from_an_ended_batch_is_not_sent_again() -> None:
    class OneLost(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any]:
            return {cid: VendorResult(body={}, usage=Usage()) for cid, _ in self.calls[1:]}

    got = await run(OneLost([]), 3)
    lost = [r for r in got if isinstance(r, RelayError)]
    assert len(got) == 3 and len(lost) == 1
    assert isinstance(lost[0], VendorAnswerUnreadable) and not lost[0].retryable


async def test_a_poll_that_keeps_failing_is_tried_until_the_batch_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rate limits and outages of the status endpoint, however many: the batch runs on at
    the vendor, so it is polled on (backing off) rather than its requests sent again."""
    monkeypatch.setattr(batch_lane, "POLL_MAX_S", 0.01)
    steps: list[Any] = [VendorRateLimited("429", retry_after=0.001)] * 6
    got = await run(ScriptedBatches([*steps, VendorUnavailable("down")] * 2 + ["done"]), 2)
    assert len(got) == 2 and all(isinstance(r, VendorResult) for r in got)


async def test_a_batch_unreadable_past_the_vendor_s_window_fails_its_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "VENDOR_WINDOW_S", 0.0)
    got = await run(ScriptedBatches([VendorUnavailable("down")]), 2)
    assert len(got) == 2 and all(isinstance(r, VendorAnswerUnreadable) for r in got)


async def test_a_key_the_vendor_refuses_while_polling_gives_way_to_the_pool_s_next() -> None:
    """A key revoked (or the pool reordered) after the batch went out: its status is read
    with another key of the pool, and its answers reach their callers."""

    class Revoked(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any] | None:
            if api_key == "key-one":
                raise VendorAuthFailed("HTTP 401: invalid api key key-one")
            return {"r0": VendorResult(body={}, usage=Usage())}

    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    pool = KeyPool(["key-one", "key-two"])
    lane = BatchLane({"v": Revoked([])}, {"v": pool}, LaneRule(poll_s=0.001), deliver)
    batch = VendorBatch(id="b", candidate=CAND, key_index=0, envelopes=[envelope()])
    await lane._follow(batch, "key-one", leased=False)
    assert len(got) == 1 and isinstance(got[0], VendorResult)


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


async def cancelled_run(
    vendor: ScriptedBatches,
    n: int,
    cancelled: set[int],
    *,
    before_sending: bool = False,
    expired: bool = False,
) -> tuple[dict[int, Any], list[int]]:
    """Send ``n`` requests as one vendor batch; those at ``cancelled`` are cancelled (their
    Batch API batch was; ``expired``: it expired, its window, their deadline, over) once
    it was sent, or all along.  Each request's answer, and the lines the lane asked
    about."""
    envs = [envelope(-1 if expired else 60) for _ in range(n)]
    got: dict[int, Any] = {}
    asked: list[int] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[envs.index(env)] = out

    async def is_cancelled(env: RequestEnvelope) -> bool:
        asked.append(envs.index(env))
        return (before_sending or bool(vendor.calls)) and envs.index(env) in cancelled

    lane = BatchLane(
        {"v": vendor},
        {"v": KeyPool(["key"])},
        LaneRule(max_size=n, poll_s=0.001),
        deliver,
        cancelled=is_cancelled,
    )
    for env in envs:
        lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    return got, asked


async def test_a_line_cancelled_while_it_waited_never_reaches_the_vendor() -> None:
    from schemas.errors import BatchCancelled

    vendor = ScriptedBatches(["done"])
    got, _ = await cancelled_run(vendor, 3, cancelled={1}, before_sending=True)
    assert len(vendor.calls) == 2, "the cancelled line was not sent"
    assert isinstance(got[1], BatchCancelled)
    assert all(isinstance(got[i], VendorResult) for i in (0, 2))


async def test_a_vendor_batch_whose_every_request_was_cancelled_is_cancelled_at_the_vendor() -> (
    None
):
    from schemas.errors import BatchCancelled

    vendor = ScriptedBatches([None, "cancelled"])
    got, _ = await cancelled_run(vendor, 3, cancelled={0, 1, 2})
    assert vendor.cancels == ["batch_1"], "cancelled once, at the vendor"
    assert all(isinstance(got[i], BatchCancelled) for i in range(3)), (
        "answered as cancelled, not sent on the realtime way"
    )


async def test_a_vendor_batch_with_one_request_still_wanted_runs_on() -> None:
    from schemas.errors import BatchCancelled

    vendor = ScriptedBatches([None, None, "done"])
    got, asked = await cancelled_run(vendor, 3, cancelled={0, 2})
    assert vendor.cancels == []
    assert all(isinstance(got[i], VendorResult) for i in range(3)), "what ran is delivered"
    assert not any(isinstance(out, BatchCancelled) for out in got.values())
    polls = asked[3:]  # after the look before sending: one look per poll
    assert polls and 2 not in polls, "the first request still wanted ends each look"


async def test_a_refused_vendor_cancel_is_asked_again_at_the_next_poll() -> None:
    vendor = ScriptedBatches([None, None, None, "cancelled"], cancel_fails=1)
    await cancelled_run(vendor, 2, cancelled={0, 1})
    assert vendor.cancels == ["batch_1"]


async def test_a_failed_request_of_a_cancelled_batch_is_not_sent_on_at_full_price() -> None:
    """A vendor batch that ended without running a line (expired, or cancelled by someone
    else) fails it as retryable, which would send it the realtime way; a line whose batch
    was cancelled meanwhile is answered batch_cancelled instead."""
    from schemas.errors import BatchCancelled

    vendor = ScriptedBatches(["cancelled"])
    got, _ = await cancelled_run(vendor, 2, cancelled={1})
    assert isinstance(got[0], VendorUnavailable) and got[0].retryable
    assert isinstance(got[1], BatchCancelled)


async def test_a_line_whose_batch_expired_while_it_waited_never_reaches_the_vendor() -> None:
    """Its Batch API batch expired (the store says so, as it says cancelled): it takes no
    more answers, so the line is not sent, and is answered ``deadline_exceeded`` (its
    error file says ``batch_expired``), not ``batch_cancelled``."""
    from schemas.errors import DeadlineExceeded

    vendor = ScriptedBatches(["done"])
    got, _ = await cancelled_run(vendor, 2, cancelled={0, 1}, before_sending=True, expired=True)
    assert vendor.calls == [], "no vendor batch for lines nobody will take"
    assert all(isinstance(got[i], DeadlineExceeded) for i in range(2))


async def test_a_vendor_batch_whose_every_request_s_batch_expired_is_cancelled_at_the_vendor():
    """A large batch paced by its tenant's rpm: its lines went out in a vendor batch late
    in its window, which the vendor had not finished when the window ended.  Once the
    relay batch has expired, the vendor batch is cancelled, so what it had not run is
    not paid for; what it had run is still delivered (and metered: the handler's line),
    and what it had not is answered ``deadline_exceeded``, never sent on the realtime
    way at the full price."""
    from schemas.errors import DeadlineExceeded

    vendor = ScriptedBatches([None, "first ran"])
    got, _ = await cancelled_run(vendor, 3, cancelled={0, 1, 2}, expired=True)
    assert vendor.cancels == ["batch_1"], "cancelled once, at the vendor"
    assert isinstance(got[0], VendorResult) and got[0].usage.input_tokens == 5
    assert all(isinstance(got[i], DeadlineExceeded) for i in (1, 2))


class Refusing(ScriptedBatches):
    """Refuses the batch as a whole: at submit (the vendor refused it), or when polled
    (the vendor failed the batch after taking it)."""

    def __init__(self, at_submit: Exception | None = None, at_poll: Exception | None = None):
        super().__init__([at_poll] if at_poll else [])
        self.at_submit = at_submit

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        if self.at_submit is not None:
            raise self.at_submit
        return await super().submit_batch(calls, api_key)


@pytest.mark.parametrize(
    "vendor",
    [
        Refusing(at_submit=BadRequest("messages.0.content.0.image_url: must be an object")),
        Refusing(at_poll=VendorBadRequest("token_limit_exceeded: enqueued token limit reached")),
    ],
    ids=["untranslatable-request", "failed-after-taken"],
)
async def test_a_batch_failed_as_a_whole_sends_each_request_on_alone(vendor) -> None:
    """One tenant's bad request, or the vendor's limit on queued tokens, must not answer
    every tenant in the vendor batch with a 400: each hears a retryable refusal, which
    the handler answers by sending the request the realtime way (only a bad one fails)."""
    got = await run(vendor, 3)
    assert len(got) == 3
    assert all(isinstance(r, VendorUnsupported) and r.retryable for r in got)


class AnthropicBatches:
    """Anthropic's Message Batches API for a real adapter: the create call answered
    ``create`` (a response, or a failure to raise), then every request it held answered."""

    def __init__(self, create: Any = None) -> None:
        self.create = create
        self.sent: list[str] = []  # the custom ids of the batch created

    def __call__(self, request: Any) -> Any:
        import httpx

        path = request.url.path
        if path.endswith("/messages/batches"):
            if isinstance(self.create, Exception):
                raise self.create
            if self.create is not None:
                return self.create
            self.sent = [r["custom_id"] for r in json.loads(request.content)["requests"]]
            return httpx.Response(200, json={"id": "b1"})
        if path.endswith("/messages/batches/b1"):
            return httpx.Response(200, json={"id": "b1", "processing_status": "ended"})
        message = {"type": "message", "role": "assistant", "content": [], "usage": {}}
        lines = [
            {"custom_id": cid, "result": {"type": "succeeded", "message": message}}
            for cid in self.sent
        ]
        return httpx.Response(200, text="".join(json.dumps(line) + "\n" for line in lines))


async def anthropic_run(vendor: AnthropicBatches, bodies: list[dict]) -> tuple[list, BatchLane]:
    """The bodies through a lane to a real Anthropic adapter; each one's answer, in order."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    http = httpx.AsyncClient(transport=httpx.MockTransport(vendor))
    adapter = make_adapter(VendorConfig(kind="anthropic", base_url="http://v.test"), http)  # type: ignore[arg-type]
    envs = [envelope() for _ in bodies]
    got: dict[int, Any] = {}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[envs.index(env)] = out

    rule = LaneRule(max_size=len(bodies), poll_s=0.001)
    lane = BatchLane({"v": adapter}, {"v": KeyPool(["key"])}, rule, deliver)
    for env, body in zip(envs, bodies, strict=True):
        env.body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], **body}
        lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    return [got[i] for i in range(len(bodies))], lane


async def test_a_request_the_vendor_cannot_take_goes_on_alone_and_the_rest_are_batched() -> None:
    """A stop sequence of whitespace alone passes that request's Anthropic candidate over:
    it alone goes on the realtime way (a retryable refusal), and the others keep the
    batch's discount."""
    vendor = AnthropicBatches()
    got, lane = await anthropic_run(vendor, [{}, {"stop": ["\n"]}, {}, {"stop": "\n"}])
    assert [type(r) for r in got] == [
        VendorResult,
        VendorUnsupported,
        VendorResult,
        VendorUnsupported,
    ]
    assert got[1].retryable and "whitespace" in got[1].message
    assert vendor.sent == ["r0", "r1"]  # the two it takes, numbered in the batch they went in
    assert lane.batches_sent == 1 and lane.accepts(CAND)


async def test_a_batch_of_requests_the_vendor_cannot_take_sends_nothing() -> None:
    vendor = AnthropicBatches()
    got, lane = await anthropic_run(vendor, [{"stop": ["\n"]}, {"stop": [" "]}])
    assert all(isinstance(r, VendorUnsupported) and r.retryable for r in got)
    assert vendor.sent == [] and lane.batches_sent == 0


@pytest.mark.parametrize("create", ["refused", "overloaded"])
async def test_a_batch_create_call_that_made_no_batch_sends_its_requests_the_realtime_way(
    create: str,
) -> None:
    """No connection to the vendor (nothing was sent), or its 529 overloaded_error (it
    turned the call away): no batch can exist, so every request hears a retryable error
    (the realtime way, where a fallback may serve it), and the lane stays open."""
    import httpx

    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    failure = {
        "refused": httpx.ConnectError("Connection refused"),
        "overloaded": httpx.Response(529, json=overloaded),
    }[create]
    got, lane = await anthropic_run(AnthropicBatches(failure), [{}, {}])
    assert all(isinstance(r, VendorUnavailable) and r.retryable for r in got)
    assert not any(isinstance(r, VendorAnswerUnreadable) for r in got)
    assert lane.accepts(CAND)


async def test_a_refusal_naming_no_request_of_the_batch_fails_it_as_a_whole() -> None:
    """An adapter's refusal that names none of the batch's requests cannot shrink it:
    the lane does not loop, and every request goes on alone."""

    class NamesNone(ScriptedBatches):
        async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
            raise CallsRefused({"elsewhere": VendorUnsupported("no")})

    got = await run(NamesNone([]), 2)
    assert len(got) == 2 and all(isinstance(r, RelayError) and r.retryable for r in got)


async def test_requests_asking_other_beta_features_go_in_other_vendor_batches() -> None:
    sent: list[list[str]] = []

    class Recording(ScriptedBatches):
        async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
            sent.append([str(c.body.get("anthropic_beta")) for _, c in calls])
            return await super().submit_batch(calls, api_key)

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        pass

    lane = BatchLane(
        {"v": Recording(["done", "done"])},
        {"v": KeyPool(["key"])},
        LaneRule(max_size=2, poll_s=0.001),
        deliver,
    )
    for betas in (["context-1m"], None, ["context-1m"], None):
        env = envelope()
        env.body = {**env.body, **({"anthropic_beta": betas} if betas else {})}
        lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    assert sorted(sent) == [["None", "None"], ["['context-1m']", "['context-1m']"]]


_MASKED = "Incorrect API key provided: sk-proj-****abcd."


def _openai_batches(request: Any) -> Any:
    import httpx

    if request.url.path.endswith("/files"):
        return httpx.Response(200, json={"id": "file_in"})
    if request.url.path.endswith("/batches"):
        return httpx.Response(200, json={"id": "b1"})
    if request.url.path.endswith("/batches/b1"):
        return httpx.Response(200, json={"id": "b1", "status": "completed", "output_file_id": "f1"})
    error = {"error": {"message": _MASKED, "code": "invalid_api_key"}}
    line = {"custom_id": "r0", "response": {"status_code": 401, "body": error}}
    return httpx.Response(200, text=json.dumps(line) + "\n")


def _anthropic_batches(request: Any) -> Any:
    import httpx

    if request.url.path.endswith("/messages/batches"):
        return httpx.Response(200, json={"id": "b1"})
    if request.url.path.endswith("/messages/batches/b1"):
        return httpx.Response(200, json={"id": "b1", "processing_status": "ended"})
    error = {"type": "error", "error": {"type": "authentication_error", "message": _MASKED}}
    line = {"custom_id": "r0", "result": {"type": "errored", "error": error}}
    return httpx.Response(200, text=json.dumps(line) + "\n")


@pytest.mark.parametrize(
    ("kind", "answer"),
    [("openai", _openai_batches), ("anthropic", _anthropic_batches)],
    ids=["openai", "anthropic"],
)
async def test_a_batch_line_quoting_the_key_masked_delivers_none_of_it(kind, answer) -> None:
    """A batch result line's error may quote the key masked ("sk-proj-****abcd"): struck
    before the error reaches the caller (and so the batch store and its results topic)."""
    import httpx

    from agents.adapters.registry import make_adapter
    from schemas.config import VendorConfig

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    adapter = make_adapter(VendorConfig(kind=kind, base_url="http://v.test/v1"), http)  # type: ignore[arg-type]
    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    rule = LaneRule(max_size=1, poll_s=0.001)
    lane = BatchLane({"v": adapter}, {"v": KeyPool(["sk-proj-0123456789abcd"])}, rule, deliver)
    env = envelope()
    env.body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    lane.submit(env, CAND)
    for task in list(lane._tasks):
        await task
    [error] = got
    assert isinstance(error, RelayError) and "provided: [redacted]." in error.message
    assert "abcd" not in error.message


async def test_a_lane_keeps_nothing_of_a_batch_once_it_is_answered() -> None:
    """Each set of beta features asked makes a queue of its own: once its batch is sent
    and answered, nothing of it stays (new sets per request grew the worker for good)."""

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        pass

    vendor = ScriptedBatches(["done"] * 20)
    lane = BatchLane({"v": vendor}, {"v": KeyPool(["key"])}, LaneRule(poll_s=0.001), deliver)
    for i in range(20):
        env = envelope()
        env.body = {**env.body, "anthropic_beta": [f"feature-{i}"]}
        lane.submit(env, CAND)
    for task in list(lane.flush_all()):
        await task
    await asyncio.sleep(0)  # (a finished task leaves the lane's set on the next turn)
    kept = {
        name: value
        for name, value in vars(lane).items()
        if isinstance(value, dict | list | set) and value and name not in ("adapters", "pools")
    }
    assert kept == {} and lane.queued == 0


class MemoryJournal:
    """The lane journal's contract, in memory, shared by two workers: every lease lapses
    at once (the worker that held it is dead); ``down`` names the steps Redis refuses."""

    def __init__(self) -> None:
        self.entries: dict[str, VendorBatch] = {}
        self.answered: dict[str, set[str]] = {}
        self.down: set[str] = set()
        self.notes = 0  # mark_delivered calls, refused or not

    def _redis(self, step: str) -> None:
        if step in self.down:
            raise RedisConnectionError("unreachable")

    async def submitted(self, batch: VendorBatch) -> None:
        self.entries[batch.id] = batch

    async def carried(self, ids: list[str]) -> set[str]:
        return set()

    async def renew(self, batch_id: str) -> bool:
        return True

    async def done(self, batch: VendorBatch) -> None:
        self._redis("done")
        self.entries.pop(batch.id, None)
        self.answered.pop(batch.id, None)

    async def adopt(self) -> list[VendorBatch]:
        # As read back from Redis: what the entry does not keep, the adopter does not get.
        return [VendorBatch.model_validate_json(b.model_dump_json()) for b in self.entries.values()]

    async def mark_delivered(self, batch_id: str, ids: list[str]) -> None:
        self.notes += 1
        self._redis("mark_delivered")
        self.answered.setdefault(batch_id, set()).update(ids)

    async def delivered(self, batch_id: str) -> set[str]:
        self._redis("delivered")
        return set(self.answered.get(batch_id, ()))


async def kill(lane: BatchLane) -> None:
    """The lane's worker dies: its tasks stop where they are, nothing more is said."""
    for task in list(lane._tasks):
        task.cancel()
    await asyncio.gather(*lane._tasks, return_exceptions=True)


def journaled_lane(journal: MemoryJournal, deliver: Any) -> BatchLane:
    rule = LaneRule(max_size=3, max_age_s=0.01, poll_s=0.001, lease_s=1)
    return BatchLane(
        {"v": ScriptedBatches(["done"])}, {"v": KeyPool(["k"])}, rule, deliver,
        journal=journal,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_a_batch_adopted_mid_delivery_answers_only_what_its_dead_worker_had_not() -> None:
    """The first worker dies delivering the third answer: the adopter delivers (and so
    meters) that one alone, not the two delivered already."""
    journal, delivered = MemoryJournal(), Counter[str]()
    dying, hang = asyncio.Event(), asyncio.Event()

    async def dies_at_the_third(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        if sum(delivered.values()) == 2:
            dying.set()
            await hang.wait()  # killed here
        delivered[env.correlation_id] += 1

    first = journaled_lane(journal, dies_at_the_third)
    envs = [envelope() for _ in range(3)]
    for env in envs:
        first.submit(env, CAND)
    await dying.wait()
    await kill(first)

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        delivered[env.correlation_id] += 1

    second = journaled_lane(journal, deliver)
    assert await second.adopt() == 1
    await asyncio.gather(*second._tasks)
    assert delivered == Counter(e.correlation_id for e in envs), "each answered once"
    assert journal.entries == {}


async def test_an_adopter_is_handed_the_requests_its_dead_worker_had_not_answered() -> None:
    """What the dead worker kept in memory for them (the deadlines of those a gateway
    waits on) is the adopter's to set up again: the lane hands it those requests, not
    the ones answered already."""
    journal, delivered = MemoryJournal(), Counter[str]()
    dying, hang = asyncio.Event(), asyncio.Event()

    async def dies_at_the_second(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        if delivered:
            dying.set()
            await hang.wait()  # killed here
        delivered[env.correlation_id] += 1

    first = journaled_lane(journal, dies_at_the_second)
    envs = [envelope() for _ in range(3)]
    for env in envs:
        first.submit(env, CAND)
    await dying.wait()
    await kill(first)

    handed: list[list[str]] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        assert handed, "set up before any answer is delivered"
        delivered[env.correlation_id] += 1

    second = journaled_lane(journal, deliver)
    second.on_adopted = lambda adopted, cand: handed.append([e.correlation_id for e in adopted])
    assert await second.adopt() == 1
    await asyncio.gather(*second._tasks)
    assert handed == [[e.correlation_id for e in envs[1:]]]
    assert delivered == Counter(e.correlation_id for e in envs)


async def test_a_batch_left_in_the_journal_by_a_redis_outage_is_not_answered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every answer delivered and noted, then Redis refuses to strike the batch out until
    the worker gives up: its adopter finds every request answered."""
    monkeypatch.setattr(batch_lane, "FORGET_ATTEMPTS", 2)
    monkeypatch.setattr(batch_lane.asyncio, "sleep", partial(asyncio.sleep, 0))
    journal, delivered = MemoryJournal(), Counter[str]()

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        delivered[env.correlation_id] += 1

    journal.down = {"done"}
    first = journaled_lane(journal, deliver)
    for _ in range(3):
        first.submit(envelope(), CAND)
    await asyncio.gather(*first.flush_all())
    assert len(journal.entries) == 1, "still journaled"

    journal.down = set()
    second = journaled_lane(journal, deliver)
    assert await second.adopt() == 1
    await asyncio.gather(*second._tasks)
    assert set(delivered.values()) == {1} and len(delivered) == 3
    assert journal.entries == {}


async def test_with_redis_down_answers_go_out_without_waiting_on_it_for_each() -> None:
    """Noting answers fails: the batch is delivered in full, Redis asked once, not once
    a request (each ask may wait out a socket timeout)."""
    journal, delivered = MemoryJournal(), Counter[str]()
    journal.down = {"mark_delivered"}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        delivered[env.correlation_id] += 1

    lane = journaled_lane(journal, deliver)
    for _ in range(3):
        lane.submit(envelope(), CAND)
    await asyncio.gather(*lane.flush_all())
    assert len(delivered) == 3 and journal.notes == 1


CHEAP = Candidate(vendor="v", model="m", input_per_1m=1, output_per_1m=1)
DEAR = Candidate(vendor="v", model="m", input_per_1m=100, output_per_1m=100)


async def test_each_request_of_a_shared_vendor_batch_is_answered_with_its_own_candidate() -> None:
    """Two aliases pricing the same vendor model differently share a vendor batch: each
    request is delivered (so billed and cached) with its own alias's candidate, not with
    whichever request joined the queue last."""
    vendor = ScriptedBatches(["done"])
    envs = [envelope() for _ in range(3)]
    got: dict[str, Candidate] = {}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        assert isinstance(out, VendorResult)
        got[env.correlation_id] = cand

    rule = LaneRule(max_size=3, poll_s=0.001)
    lane = BatchLane({"v": vendor}, {"v": KeyPool(["key"])}, rule, deliver)
    for env, cand in zip(envs, (CHEAP, DEAR, CHEAP), strict=True):
        lane.submit(env, cand)
    for task in list(lane._tasks):
        await task
    assert len(vendor.calls) == 3, "one vendor batch"
    assert [got[e.correlation_id] for e in envs] == [CHEAP, DEAR, CHEAP]


async def test_a_cancelled_request_is_answered_with_its_own_candidate() -> None:
    from schemas.errors import BatchCancelled

    envs = [envelope() for _ in range(2)]
    got: dict[str, tuple[Candidate, Any]] = {}

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[env.correlation_id] = (cand, out)

    async def cancelled(env: RequestEnvelope) -> bool:
        return env is envs[0]

    rule = LaneRule(max_size=2, poll_s=0.001)
    lane = BatchLane(
        {"v": ScriptedBatches(["done"])}, {"v": KeyPool(["key"])}, rule, deliver,
        cancelled=cancelled,
    )  # fmt: skip
    lane.submit(envs[0], CHEAP)
    lane.submit(envs[1], DEAR)
    for task in list(lane._tasks):
        await task
    cand, out = got[envs[0].correlation_id]
    assert cand == CHEAP and isinstance(out, BatchCancelled)
    assert got[envs[1].correlation_id][0] == DEAR


async def test_an_adopted_batch_answers_each_request_with_its_own_candidate() -> None:
    """The journal entry keeps each request's candidate: the worker adopting the batch
    bills each as its first worker would have."""
    journal, got = MemoryJournal(), dict[str, Candidate]()
    dying, hang = asyncio.Event(), asyncio.Event()

    async def never(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        dying.set()
        await hang.wait()  # the first worker dies before answering any

    first = journaled_lane(journal, never)
    envs = [envelope() for _ in range(3)]
    for env, cand in zip(envs, (DEAR, CHEAP, DEAR), strict=True):
        first.submit(env, cand)
    await dying.wait()
    await kill(first)

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got[env.correlation_id] = cand

    second = journaled_lane(journal, deliver)
    second.adapters = {"v": AnswersAll(3)}
    assert await second.adopt() == 1
    await asyncio.gather(*second._tasks)
    assert [got[e.correlation_id] for e in envs] == [DEAR, CHEAP, DEAR]


class AnswersAll(ScriptedBatches):
    """A vendor batch (sent by another worker) that answers its ``n`` requests."""

    def __init__(self, n: int) -> None:
        super().__init__([])
        self.n = n

    async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any]:
        return {f"r{i}": VendorResult(body={}, usage=Usage()) for i in range(self.n)}


async def test_a_batch_journaled_with_one_candidate_is_still_adopted() -> None:
    """Entries written before each request's candidate was kept hold one: an adopter
    answers every request with it."""
    envs = [envelope() for _ in range(2)]
    old = {
        "id": "vb-old",
        "candidate": DEAR.model_dump(),
        "key_index": 0,
        "envelopes": [json.loads(e.model_dump_json()) for e in envs],
    }
    journal, got = MemoryJournal(), dict[str, Candidate]()
    journal.entries["vb-old"] = VendorBatch.model_validate_json(json.dumps(old))

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        assert isinstance(out, VendorResult)
        got[env.correlation_id] = cand

    lane = journaled_lane(journal, deliver)
    lane.adapters = {"v": AnswersAll(2)}
    assert await lane.adopt() == 1
    await asyncio.gather(*lane._tasks)
    assert got == {e.correlation_id: DEAR for e in envs}
    assert journal.entries == {}


async def test_a_producer_s_odd_beta_list_queues_apart_instead_of_failing_the_request() -> None:
    """A producer's body may hold anything in ``anthropic_beta``: such a request waits in
    a batch of its own (which, refused, sends it on alone to its own 400), never an
    exception that leaves it unanswered."""

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        pass

    lane = BatchLane({"v": ScriptedBatches([])}, {"v": KeyPool(["k"])}, LaneRule(), deliver)
    odd = request_envelope(alias="a", body={"model": "a", "anthropic_beta": [["x"], {"y": 1}]})
    plain = request_envelope(alias="a", body={"model": "a"})
    lane.submit(odd, CAND)
    lane.submit(plain, CAND)
    assert lane.queued == 2 and len(lane._queues) == 2
    for key in list(lane._queues):
        lane.withdraw(lane._queues[key].items[0][0].correlation_id)
        timer = lane._queues[key].timer
        assert timer is not None
        timer.cancel()


async def test_a_request_reaching_a_stopping_lane_goes_out_at_once_and_the_drain_waits() -> None:
    """A request the stopping worker is still finishing reaches the lane after its
    flush: it is sent at once (no timer the drain would not wait for), and the drain
    waits for its vendor batch as for those sent at the flush."""
    from streams.wiring import finish

    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    rule = LaneRule(max_size=100, max_age_s=60, poll_s=0.001)
    lane = BatchLane({"v": ScriptedBatches([None, "done"])}, {"v": KeyPool(["k"])}, rule, deliver)
    lane.stopping = True
    live = lane.flush_all()
    assert not live  # nothing waited when the worker began to stop

    async def late() -> None:
        await asyncio.sleep(0.01)
        lane.submit(envelope(), CAND)

    request = asyncio.create_task(late())
    await finish(lambda: {request}, live, drain_s=5)
    assert len(got) == 1 and isinstance(got[0], VendorResult)


async def test_an_answered_vendor_batch_is_cleaned_up_after_its_answers_are_delivered() -> None:
    """What the batch left at the vendor goes once every caller has its answer; a batch
    whose answers could not be read keeps it (for whoever looks into it), and a cleanup
    the vendor refuses changes nothing for the callers."""
    order: list[str] = []

    class Cleaned(ScriptedBatches):
        async def clean_batch(self, batch_id: str, api_key: str) -> None:
            order.append("cleaned")
            raise VendorUnavailable(f"HTTP 503 for key {api_key}")

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        order.append("delivered")

    rule = LaneRule(max_size=2, poll_s=0.001)
    lane = BatchLane({"v": Cleaned(["done"])}, {"v": KeyPool(["k"])}, rule, deliver)
    lane.submit(envelope(), CAND)
    lane.submit(envelope(), CAND)
    await asyncio.gather(*list(lane._tasks))
    assert order == ["delivered", "delivered", "cleaned"]
    order.clear()
    unreadable = Cleaned([KeyError("x")] * batch_lane.POLL_FAILURES)
    lane = BatchLane({"v": unreadable}, {"v": KeyPool(["k"])}, rule, deliver)
    lane.submit(envelope(), CAND)
    lane.submit(envelope(), CAND)
    await asyncio.gather(*list(lane._tasks))
    assert order == ["delivered", "delivered"]


async def test_results_read_with_another_key_are_scrubbed_of_the_key_the_batch_went_with() -> None:
    """A line's error may quote the key the batch ran under: after the poll moved to the
    pool's next key, both keys are struck out of what reaches the callers."""

    class Rotated(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any] | None:
            if api_key == "sk-one-1111111111":
                raise VendorAuthFailed("HTTP 401: key revoked")
            return {"r0": VendorUnavailable("batch request not run: bad key sk-one-1111111111")}

    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    pool = KeyPool(["sk-one-1111111111", "sk-two-2222222222"])
    lane = BatchLane({"v": Rotated([])}, {"v": pool}, LaneRule(poll_s=0.001), deliver)
    batch = VendorBatch(id="b", candidate=CAND, key_index=0, envelopes=[envelope()])
    await lane._follow(batch, "sk-one-1111111111", leased=False)
    assert len(got) == 1 and "sk-one-1111111111" not in str(got[0])


async def test_a_poll_failing_a_thousand_times_backs_off_without_overflowing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_lane, "POLL_MAX_S", 0.0)
    got = await run(ScriptedBatches([VendorUnavailable("down")] * 1100 + ["done"]), 1)
    assert len(got) == 1 and isinstance(got[0], VendorResult)


async def test_a_batch_with_an_unreadable_answer_keeps_what_it_left_at_the_vendor() -> None:
    cleaned: list[str] = []

    class PartlyUnreadable(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any]:
            return {"r0": VendorResult(body={}, usage=Usage()), "r1": VendorAnswerUnreadable("?")}

        async def clean_batch(self, batch_id: str, api_key: str) -> None:
            cleaned.append(batch_id)

    got = await run(PartlyUnreadable([]), 2)
    assert len(got) == 2 and cleaned == []


async def test_a_batch_with_a_results_line_nobody_could_read_keeps_what_it_left() -> None:
    """A results line that is not JSON is skipped, its request with it: that request may
    have been billed, and what the vendor keeps is its only record."""
    cleaned: list[str] = []

    class OneLineGarbled(ScriptedBatches):
        async def poll_batch(self, batch_id: str, api_key: str) -> dict[str, Any]:
            return {"r0": VendorResult(body={}, usage=Usage())}  # r1's line did not read

        async def clean_batch(self, batch_id: str, api_key: str) -> None:
            cleaned.append(batch_id)

    got = await run(OneLineGarbled([]), 2)
    assert [type(r) for r in got] == [VendorResult, VendorAnswerUnreadable]
    assert cleaned == []


async def test_a_batch_that_may_have_been_made_fails_its_requests_never_sent_again() -> None:
    """The create call failed and nothing settled whether the vendor made the batch (the
    adapter says so): it may run and bill, so every request fails (not retryable: none
    goes on the realtime way at full price), and the vendor's batch API is left alone."""
    got: list[Any] = []

    class MaybeMade(ScriptedBatches):
        async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
            raise VendorAnswerUnreadable("the create call timed out; the vendor may run it")

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    lane = BatchLane({"v": MaybeMade([])}, {"v": KeyPool(["key"])}, LaneRule(max_size=3), deliver)
    for _ in range(3):
        lane.submit(envelope(), CAND)
    for task in list(lane._tasks):
        await task
    assert len(got) == 3 and all(isinstance(r, VendorAnswerUnreadable) for r in got)
    assert not any(r.retryable for r in got)
    assert not lane.accepts(CAND)  # later background requests go the realtime way


async def test_a_batch_still_in_the_journal_keeps_what_it_left_at_the_vendor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis would not let the answered batch be struck out: an adopter may read it
    again, so its files stay."""
    monkeypatch.setattr(batch_lane, "FORGET_ATTEMPTS", 0)  # every strike-out refused
    cleaned: list[str] = []

    class Cleaned(ScriptedBatches):
        async def clean_batch(self, batch_id: str, api_key: str) -> None:
            cleaned.append(batch_id)

    class Journal:
        async def delivered(self, batch_id: str) -> set[str]:
            return set()

        async def mark_delivered(self, batch_id: str, ids: list[str]) -> None:
            pass

        async def renew(self, batch_id: str) -> bool:
            return True

    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    lane = BatchLane(
        {"v": Cleaned(["done"])}, {"v": KeyPool(["k"])}, LaneRule(poll_s=0.001), deliver,
        journal=Journal(),  # type: ignore[arg-type]
    )  # fmt: skip
    batch = VendorBatch(id="b", candidate=CAND, key_index=0, envelopes=[envelope()])
    batch_vendor = lane.adapters["v"]
    batch_vendor.calls = [("r0", VendorCall("m", {}, "k"))]  # type: ignore[attr-defined]
    await lane._follow(batch, "k", leased=True)
    assert len(got) == 1 and cleaned == []


async def test_requests_another_worker_answers_are_handed_back_to_the_caller() -> None:
    """Two the journal says another worker's vendor batch carries, and the whole batch a
    worker loses to an adopter: each is told ``on_dropped`` (its holds go), never sent
    or answered here."""
    dropped: list[str] = []
    carried_envs = [envelope(), envelope()]

    class Carrying(MemoryJournal):
        async def carried(self, ids: list[str]) -> set[str]:
            return {env.correlation_id for env in carried_envs} & set(ids)

    class Lost(Carrying):
        async def renew(self, batch_id: str) -> bool:
            return False  # adopted by another worker meanwhile

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        raise AssertionError("answered by the other worker")

    def on_dropped(envs: list[RequestEnvelope]) -> None:
        dropped.extend(env.correlation_id for env in envs)

    vendor = ScriptedBatches(["done"])
    lane = BatchLane(
        {"v": vendor}, {"v": KeyPool(["k"])}, LaneRule(max_size=2, poll_s=0.001), deliver,
        journal=Carrying(), on_dropped=on_dropped,  # type: ignore[arg-type]
    )  # fmt: skip
    for env in carried_envs:
        lane.submit(env, CAND)
    await asyncio.gather(*list(lane._tasks))
    assert sorted(dropped) == sorted(e.correlation_id for e in carried_envs)
    assert vendor.calls == [], "not sent again"
    dropped.clear()
    mine = envelope()
    lane = BatchLane(
        {"v": ScriptedBatches([None])}, {"v": KeyPool(["k"])}, LaneRule(poll_s=0.001), deliver,
        journal=Lost(), on_dropped=on_dropped,  # type: ignore[arg-type]
    )  # fmt: skip
    batch = VendorBatch(id="b", candidate=CAND, key_index=0, envelopes=[mine])
    await lane._follow(batch, "k", leased=True)
    assert dropped == [mine.correlation_id]


# -- a knob the model refuses: the vendor batch's 400 is not the answer -------------------

# OpenAI's 400 for reasoning_effort sent to a model that does not reason (gpt-4o, gpt-4.1).
_EFFORT_REFUSED = {
    "message": "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
    "type": "invalid_request_error",
    "param": "reasoning_effort",
    "code": "unsupported_parameter",
}


class OpenAIRefusingEffort:
    """OpenAI's batch and chat APIs for gpt-4o, which refuses ``reasoning_effort`` as a
    batch line (its 400 in the output file) and as a live call; what each was sent."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []  # the batch's input file
        self.chats: list[dict[str, Any]] = []  # live chat calls

    def __call__(self, request: Any) -> Any:
        import httpx

        path = request.url.path
        if path == "/v1/files":
            jsonl = request.content.split(b"\r\n\r\n", 2)[-1].split(b"\r\n--")[0]
            self.lines = [json.loads(x) for x in jsonl.decode().splitlines() if x.strip()]
            return httpx.Response(200, json={"id": "file_in"})
        if path == "/v1/batches":
            return httpx.Response(200, json={"id": "b1", "status": "validating"})
        if path == "/v1/batches/b1":
            done = {"id": "b1", "status": "completed", "output_file_id": "file_out"}
            return httpx.Response(200, json=done)
        if path == "/v1/files/file_out/content":
            out = [
                {"custom_id": line["custom_id"], "response": self._answer(line["body"])}
                for line in self.lines
            ]
            return httpx.Response(200, text="".join(json.dumps(x) + "\n" for x in out))
        assert path == "/v1/chat/completions", path
        got = self._answer(json.loads(request.content))
        self.chats.append(json.loads(request.content))
        return httpx.Response(got["status_code"], json=got["body"])

    @staticmethod
    def _answer(body: dict[str, Any]) -> dict[str, Any]:
        if "reasoning_effort" in body:
            return {"status_code": 400, "body": {"error": _EFFORT_REFUSED}}
        message = {"role": "assistant", "content": "Hi"}
        answer = {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
        }
        return {"status_code": 200, "body": answer}


async def _background_on_gpt_4o(body: dict[str, Any]) -> tuple[OpenAIRefusingEffort, Any, Any]:
    """``body`` sent as background work to an alias of gpt-4o at OpenAI, which has a batch
    API: the vendor, and the caller's replies and ledger lines (a worker with a lane)."""
    import httpx

    from agents.adapters.openai import OpenAIAdapter
    from agents.dispatch import Dispatcher
    from agents.handler import RequestHandler
    from agents.route import Router
    from schemas.config import RelayConfig
    from tables.prices import PriceSheet
    from tests.support.sinks import Sink

    config = RelayConfig.model_validate(
        {
            "vendors": {"a": {"kind": "openai", "base_url": "https://api.openai.com/v1"}},
            "models": {
                "m": {
                    "candidates": [
                        {"vendor": "a", "model": "gpt-4o", "input_per_1m": 1, "output_per_1m": 2}
                    ]
                }
            },
            "tenants": {"t": {}},
        }
    )
    openai = OpenAIRefusingEffort()
    adapter = OpenAIAdapter(
        config.vendors["a"], httpx.AsyncClient(transport=httpx.MockTransport(openai))
    )
    sink = Sink()
    handler = RequestHandler(
        Router(config, {}.get),
        Dispatcher({"a": adapter}, {"a": KeyPool(["k"])}, sink.health),
        PriceSheet.from_config(config.models),
        sink,
        discounts={"a": 0.5},
    )
    rule = LaneRule(max_size=1, poll_s=0.001)
    lane = handler.lane = BatchLane(
        {"a": adapter}, {"a": KeyPool(["k"])}, rule, handler.deliver_batch
    )
    env = request_envelope(alias="m", priority=Priority.background, body=body)
    await handler.handle(env)
    await asyncio.gather(*list(lane._tasks))
    await asyncio.gather(*list(handler.spawned))  # the realtime way, on its own task
    assert lane.batches_sent == 1 and len(openai.lines) == 1
    return openai, sink.for_(env.correlation_id), sink.ledger


async def test_reasoning_effort_the_relay_added_is_struck_for_a_background_request_too() -> None:
    """An Anthropic client's thinking goes to gpt-4o as reasoning_effort, which it
    refuses.  Sent the realtime way the relay strikes it and asks again; as a vendor
    batch line its 400 is not the answer either: the request goes on the realtime way,
    where it is struck, and is answered as it would have been sent so at first.  Billed
    once: the line that failed is not billed, the realtime call is."""
    body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    openai, replies, ledger = await _background_on_gpt_4o(body)
    assert openai.lines[0]["body"]["reasoning_effort"] == "low", "the lane sent the relay's"
    assert [sent.get("reasoning_effort") for sent in openai.chats] == ["low", None]
    [final] = replies
    assert final.kind == "final" and final.body["choices"][0]["message"]["content"] == "Hi"
    [line] = ledger
    assert line.status == "ok" and not line.batch_api and line.cost > 0


async def test_a_clients_own_reasoning_effort_refused_in_a_vendor_batch_is_its_400() -> None:
    """A client's own reasoning_effort is its choice, the way a batch goes as the realtime
    way: the model's 400 naming the field is its answer, and nothing is billed."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": "low",
    }
    openai, replies, ledger = await _background_on_gpt_4o(body)
    assert [sent.get("reasoning_effort") for sent in openai.chats] == ["low"]
    [error] = replies
    assert error.kind == "error" and error.error["param"] == "reasoning_effort"
    [line] = ledger
    assert (line.status, line.cost) == ("error", 0)
