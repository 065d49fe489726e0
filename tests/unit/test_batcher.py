"""Embedding window batching: many callers, one vendor call, answers split back."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import pytest

from agents.adapters.base import VendorCall, VendorResult
from agents.batcher import EmbeddingBatcher
from schemas.config import Candidate
from schemas.errors import VendorBadRequest, VendorError, VendorUnavailable
from schemas.usage import Usage


def inputs_of(body: dict[str, Any], field: str = "input") -> list[Any]:
    """A request's inputs as a list: a lone caller's own request may carry one string
    (or one token list), as it came."""
    raw = body[field]
    return raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]


class Vendor:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.fail = fail

    async def embed(self, call: VendorCall) -> VendorResult:
        inputs = inputs_of(call.body)
        self.calls.append(list(inputs))
        self.bodies.append(call.body)
        if self.fail:
            raise VendorUnavailable("down")
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t))]}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(len(t) for t in inputs)
        return VendorResult(
            {"object": "list", "data": data, "model": call.model}, Usage(input_tokens=tokens)
        )


CAND = Candidate(vendor="v", model="x")


def call(inputs: str | list[str]) -> VendorCall:
    return VendorCall(model="e", body={"model": "e", "input": inputs}, api_key="k")


async def test_calls_in_one_window_share_a_vendor_call_and_get_their_own_vectors():
    vendor, batcher = Vendor(), EmbeddingBatcher()
    asks = [["a"], "bb", ["ccc", "dddd"], "eeeee"]
    results = await asyncio.gather(
        *(batcher.embed(("k",), call(a), vendor.embed, window_ms=30, max_size=64) for a in asks)
    )
    assert vendor.calls == [["a", "bb", "ccc", "dddd", "eeeee"]]
    vectors = [[d["embedding"][0] for d in r.body["data"]] for r in results]
    assert vectors == [[1.0], [2.0], [3.0, 4.0], [5.0]]
    assert [d["index"] for d in results[2].body["data"]] == [0, 1]
    assert sum(r.usage.input_tokens for r in results) == 15
    assert all(r.shared for r in results)


async def test_max_size_flushes_before_the_window_ends():
    vendor, batcher = Vendor(), EmbeddingBatcher()
    started = asyncio.get_running_loop().time()
    await asyncio.gather(
        *(
            batcher.embed(("k",), call(str(i)), vendor.embed, window_ms=5000, max_size=3)
            for i in range(3)
        )
    )
    assert asyncio.get_running_loop().time() - started < 1.0
    assert vendor.calls == [["0", "1", "2"]]


async def test_a_caller_that_would_take_a_window_over_max_size_starts_the_next_one():
    """The window goes as it is, and the caller waits in a new one: a window never
    carries more than ``max_size`` inputs unless one caller alone does."""
    vendor, batcher = Vendor(), EmbeddingBatcher()
    asks: list[str | list[str]] = ["a", "b", ["c", "d"], ["e", "f", "g", "h", "i"], "j"]
    results = await asyncio.gather(
        *(batcher.embed(("k",), call(a), vendor.embed, window_ms=20, max_size=3) for a in asks)
    )
    assert vendor.calls == [["a", "b"], ["c", "d"], ["e", "f", "g", "h", "i"], ["j"]]
    assert [len(r.body["data"]) for r in results] == [1, 1, 2, 5, 1]


async def test_a_window_never_carries_more_than_openai_takes_in_one_request():
    """OpenAI refuses an embeddings request of more than 2,048 inputs or 300,000 tokens;
    a merged call over either would be refused, and every caller sent again alone."""
    vendor, batcher = Vendor(), EmbeddingBatcher()
    many = [f"x{i}" for i in range(2048)]  # the most the gateway lets one request carry
    await asyncio.gather(
        *(batcher.embed(("k",), call(a), vendor.embed, 20, 2048) for a in ["a", "b", many])
    )
    assert [len(c) for c in vendor.calls] == [2, 2048]
    vendor.calls.clear()
    long = "word " * 200_000  # ~250,000 tokens at four characters a token
    await asyncio.gather(
        *(batcher.embed(("k",), call(a), vendor.embed, 20, 64) for a in [long, long, "short"])
    )
    assert [[len(t) for t in c] for c in vendor.calls] == [[len(long)], [len(long), 5]]


async def test_a_failed_batch_fails_every_caller_with_the_vendor_error():
    vendor, batcher = Vendor(fail=True), EmbeddingBatcher()
    results = await asyncio.gather(
        *(
            batcher.embed(("k",), call("x"), vendor.embed, window_ms=10, max_size=8)
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, VendorUnavailable) for r in results)
    assert len(vendor.calls) == 1


async def test_different_keys_never_mix():
    vendor, batcher = Vendor(), EmbeddingBatcher()
    await asyncio.gather(
        batcher.embed(("m1",), call("a"), vendor.embed, window_ms=10, max_size=8),
        batcher.embed(("m2",), call("b"), vendor.embed, window_ms=10, max_size=8),
    )
    assert sorted(vendor.calls) == [["a"], ["b"]]


async def test_a_lone_call_is_not_marked_shared():
    vendor, batcher = Vendor(), EmbeddingBatcher()
    result = await batcher.embed(("k",), call("solo"), vendor.embed, window_ms=5, max_size=8)
    assert not result.shared and result.body["data"][0]["embedding"] == [4.0]


async def test_a_refused_input_fails_only_its_own_caller():
    class Picky(Vendor):
        async def embed(self, call: VendorCall) -> VendorResult:
            if "" in inputs_of(call.body):
                self.calls.append(inputs_of(call.body))
                raise VendorBadRequest("HTTP 400: input must not be empty")
            return await super().embed(call)

    vendor, batcher = Picky(), EmbeddingBatcher()
    good, bad = await asyncio.gather(
        batcher.embed(("k",), call("fine"), vendor.embed, window_ms=10, max_size=8),
        batcher.embed(("k",), call(""), vendor.embed, window_ms=10, max_size=8),
        return_exceptions=True,
    )
    assert isinstance(good, VendorResult) and good.body["data"][0]["embedding"] == [4.0]
    assert isinstance(bad, VendorBadRequest)
    assert vendor.calls == [["fine", ""], ["fine"], [""]], "together, then each alone"


class TooLong(Vendor):
    """OpenAI's 400 for an input over the model's context, as the adapter raises it."""

    async def embed(self, call: VendorCall) -> VendorResult:
        inputs = inputs_of(call.body)
        if any(len(t) > 10 for t in inputs):
            self.calls.append(list(inputs))
            err = VendorBadRequest("HTTP 400: maximum context length exceeded", param="input")
            err.vendor_code = "context_length_exceeded"
            raise err
        return await super().embed(call)


async def test_a_lone_caller_hears_the_vendor_s_own_code_and_param():
    """What an OpenAI-format client branches on (``context_length_exceeded``, the field
    blamed) is the same whether or not the alias batches."""
    batcher = EmbeddingBatcher()
    with pytest.raises(VendorBadRequest) as caught:
        await batcher.embed(("k",), call("x" * 20), TooLong().embed, window_ms=10, max_size=8)
    assert (caught.value.vendor_code, caught.value.param) == ("context_length_exceeded", "input")
    assert caught.value.openai_body()["error"]["code"] == "context_length_exceeded"


async def test_a_caller_sent_alone_after_a_shared_400_hears_the_vendor_s_own_code():
    vendor, batcher = TooLong(), EmbeddingBatcher()
    good, bad = await asyncio.gather(
        batcher.embed(("k",), call("fine"), vendor.embed, window_ms=10, max_size=8),
        batcher.embed(("k",), call("x" * 20), vendor.embed, window_ms=10, max_size=8),
        return_exceptions=True,
    )
    assert isinstance(good, VendorResult)
    assert isinstance(bad, VendorBadRequest)
    assert (bad.vendor_code, bad.param) == ("context_length_exceeded", "input")


async def test_a_content_filter_refusal_keeps_the_field_it_blamed():
    from schemas.errors import ContentFiltered

    async def filtered(c: VendorCall) -> VendorResult:
        raise ContentFiltered("HTTP 400: the prompt was filtered", param="prompt")

    batcher = EmbeddingBatcher()
    errors = await asyncio.gather(
        *(batcher.embed(("k",), call(t), filtered, 10, 8) for t in ("a", "b")),
        return_exceptions=True,
    )
    assert [(type(e), getattr(e, "param", None)) for e in errors] == [
        (ContentFiltered, "prompt")
    ] * 2


async def test_text_and_token_inputs_never_share_a_call():
    vendor, batcher = Vendor(), EmbeddingBatcher()
    tokens = VendorCall(model="e", body={"model": "e", "input": [[1, 2, 3]]}, api_key="k")
    await asyncio.gather(
        batcher.embed(("k",), call("text"), vendor.embed, window_ms=10, max_size=8),
        batcher.embed(("k",), tokens, vendor.embed, window_ms=10, max_size=8),
    )
    assert sorted(map(str, vendor.calls)) == ["['text']", "[[1, 2, 3]]"]


async def test_an_answer_that_cannot_be_split_still_answers_everyone():
    class Broken(Vendor):
        async def embed(self, call: VendorCall) -> VendorResult:
            return VendorResult({"data": None}, Usage())

    batcher = EmbeddingBatcher()
    results = await asyncio.gather(
        *(
            batcher.embed(("k",), call(str(i)), Broken().embed, window_ms=10, max_size=8)
            for i in range(2)
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, VendorError) for r in results)


class Skipping(Vendor):
    """A server that skips an input it will not take (here any empty one) instead of
    refusing the call: its answer has fewer items than the call had inputs."""

    async def embed(self, call: VendorCall) -> VendorResult:
        inputs = inputs_of(call.body)
        self.calls.append(list(inputs))
        data = [
            {"object": "embedding", "index": i, "embedding": [f"emb({t})"]}
            for i, t in enumerate(inputs)
            if t
        ]
        return VendorResult({"object": "list", "data": data}, Usage(input_tokens=3))


async def test_an_answer_missing_an_input_never_hands_one_caller_another_s_vectors():
    """Cut by position, a shared answer that skipped an input would give the next caller
    (another tenant's, maybe) the vectors of the one before: each caller goes on alone
    instead, as for a 400, and only the one whose answer still does not match fails."""
    vendor, batcher = Skipping(), EmbeddingBatcher()
    first, second = await asyncio.gather(
        batcher.embed(("k",), call(["tenant-a", ""]), vendor.embed, window_ms=10, max_size=8),
        batcher.embed(("k",), call(["tenant-b"]), vendor.embed, window_ms=10, max_size=8),
        return_exceptions=True,
    )
    assert isinstance(first, VendorError) and first.retryable  # the vendor's failure
    assert isinstance(second, VendorResult)
    assert [d["embedding"] for d in second.body["data"]] == [["emb(tenant-b)"]]
    assert vendor.calls == [["tenant-a", "", "tenant-b"], ["tenant-a", ""], ["tenant-b"]]


async def test_an_answer_that_cannot_be_split_is_billed_to_its_callers_all_the_same():
    """The vendor answered (and billed) the merged call: each caller is billed its share
    of it by the size of its inputs, as a share of a call it was cut from is, besides
    its own call after; a caller that had left is billed its share, not dropped."""
    went, release = asyncio.Event(), asyncio.Event()

    class Slow(Skipping):
        async def embed(self, call: VendorCall) -> VendorResult:
            went.set()
            await release.wait()  # the merged call's answer, held until one caller left
            return await super().embed(call)

    vendor, batcher = Slow(), EmbeddingBatcher()
    shares: dict[str, list[asyncio.Future[VendorResult]]] = {"a": [], "b": [], "c": []}

    def ask(text: list[str], who: str) -> Any:
        return batcher.embed(("k",), call(text), vendor.embed, 10, 8, orphaned=shares[who].append)

    first = asyncio.create_task(ask(["aaaa", ""], "a"))
    second = asyncio.create_task(ask(["bbbbbbbb"], "b"))
    gone = asyncio.create_task(ask(["cccc"], "c"))
    await went.wait()  # the window went out
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], VendorError) and isinstance(results[1], VendorResult)
    # Again in halves (the caller that left is sent no more), then the half that still
    # does not match in halves again.
    assert vendor.calls == [
        ["aaaa", "", "bbbbbbbb", "cccc"],
        ["aaaa", "", "bbbbbbbb"],
        ["aaaa", ""],
        ["bbbbbbbb"],
    ]
    billed = {who: [f.result().usage.input_tokens for f in fs] for who, fs in shares.items()}
    # The merged call's 3 tokens by size (4, 8 and 4 characters), the half's 3 by size
    # (4 and 8), then a's own call (which still does not match): 3.
    assert billed == {"a": [0, 1, 3], "b": [1, 2], "c": [2]}
    assert results[1].usage.input_tokens == 3  # its own answer, besides its share


async def test_an_unreadable_answer_is_billed_to_its_callers_before_they_fail():
    class Broken(Vendor):
        async def embed(self, call: VendorCall) -> VendorResult:
            return VendorResult({"data": None}, Usage(input_tokens=10, cache_read_tokens=4))

    batcher = EmbeddingBatcher()
    shares: list[asyncio.Future[VendorResult]] = []
    results = await asyncio.gather(
        *(
            batcher.embed(("k",), call(t), Broken().embed, 10, 8, orphaned=shares.append)
            for t in ("a", "bbb")
        ),
        return_exceptions=True,
    )
    assert all(isinstance(r, VendorError) for r in results)
    billed = [f.result().usage for f in shares]
    assert [(u.input_tokens, u.cache_read_tokens) for u in billed] == [(2, 1), (8, 3)]


@pytest.mark.parametrize(
    "indices",
    [[0, 2], [0, 0], [1, 2], [0, 1, 2]],
    ids=["gap", "twice", "shifted", "one-too-many"],
)
def test_split_refuses_an_answer_not_indexed_one_per_input(indices: list[int]) -> None:
    from agents.batcher import Mismatched, split

    data = [{"index": i, "embedding": [float(i)]} for i in indices]
    with pytest.raises(Mismatched):
        split(VendorResult({"data": data}, Usage()), [["a"], ["b"]])


async def test_a_shared_call_s_error_never_carries_its_key_to_the_other_callers():
    """The shared call goes with its first caller's key; a vendor echoing it back is
    struck of it before every caller (whose own keys may differ) hears the error."""
    from schemas.errors import VendorAuthFailed

    async def echoing(c: VendorCall) -> VendorResult:
        raise VendorAuthFailed(f"HTTP 401: invalid key {c.api_key}")

    keys = ["sk-first-0123456789", "sk-other-0123456789"]
    batcher = EmbeddingBatcher()
    errors = await asyncio.gather(
        *(
            batcher.embed(
                ("k",),
                VendorCall(model="e", body={"model": "e", "input": "x"}, api_key=key),
                echoing,
                window_ms=10,
                max_size=8,
            )
            for key in keys
        ),
        return_exceptions=True,
    )
    assert all(isinstance(e, VendorAuthFailed) for e in errors)
    assert all(keys[0] not in e.message and "[redacted]" in e.message for e in errors)  # type: ignore[union-attr]
    # Only the first caller's key was refused: the other's dispatcher must not take its
    # own (good) key out of the pool for it.
    assert [e.other_key for e in errors] == [False, True]  # type: ignore[union-attr]


def test_each_caller_pays_for_its_own_share_of_the_tokens():
    """A one-word caller batched with a long one pays for its few tokens, not half."""
    from agents.batcher import COMPLETIONS, split

    body = {
        "choices": [
            {"index": 0, "text": "yes"},
            {"index": 1, "text": "a much longer answer than the first one"},
        ]
    }
    result = VendorResult(body, Usage(input_tokens=1000, output_tokens=44, cache_read_tokens=500))
    short, long = split(result, [["hi"], ["x" * 998]], COMPLETIONS)
    assert (short.usage.input_tokens, long.usage.input_tokens) == (2, 998)
    assert short.usage.cache_read_tokens + long.usage.cache_read_tokens == 500
    assert short.usage.output_tokens < long.usage.output_tokens
    assert short.usage.output_tokens + long.usage.output_tokens == 44
    assert short.body["choices"] == [{"index": 0, "text": "yes"}]


async def test_several_answers_per_prompt_are_never_window_batched():
    """With ``n`` > 1 the vendor interleaves answers by prompt; such calls go alone."""
    from agents.dispatch import Dispatcher
    from schemas.config import Batching
    from schemas.envelope import RequestEnvelope

    sent: list[VendorCall] = []

    async def complete(c: VendorCall) -> VendorResult:
        sent.append(c)
        return VendorResult({"choices": []}, Usage())

    dispatcher = Dispatcher({}, {}, lambda ev: asyncio.sleep(0), batching={"m": Batching()})
    from agents.batcher import COMPLETIONS
    from tests.support.envelopes import request_envelope

    body = {"model": "m", "prompt": ["a"], "n": 2}
    env: RequestEnvelope = request_envelope(body=body, endpoint="completions", alias="m")
    c = VendorCall(model="x", body=body, api_key="k")
    cand = Candidate(vendor="v", model="x")
    await asyncio.gather(dispatcher._batched(env, cand, c, complete, COMPLETIONS),
                         dispatcher._batched(env, cand, c, complete, COMPLETIONS))  # fmt: skip
    assert len(sent) == 2 and all(s.body["prompt"] == ["a"] for s in sent)


async def test_text_and_token_id_prompts_never_share_a_vendor_call():
    """A vendor takes a list of texts or a list of token-id lists, never both mixed."""
    from agents.batcher import COMPLETIONS
    from agents.dispatch import Dispatcher
    from schemas.config import Batching
    from tests.support.envelopes import request_envelope

    sent: list[VendorCall] = []

    async def complete(c: VendorCall) -> VendorResult:
        sent.append(c)
        choices = [{"index": i, "text": "ok"} for i in range(len(inputs_of(c.body, "prompt")))]
        return VendorResult({"choices": choices}, Usage())

    dispatcher = Dispatcher({}, {}, lambda ev: asyncio.sleep(0), batching={"m": Batching()})
    calls = []
    for prompt in ("a text", [15339, 1917], "another text", [[1, 2], [3]]):
        body = {"model": "m", "prompt": prompt}
        env = request_envelope(body=body, endpoint="completions", alias="m")
        call = VendorCall(model="x", body=body, api_key="k")
        calls.append(dispatcher._batched(env, CAND, call, complete, COMPLETIONS))
    await asyncio.gather(*calls)
    assert sorted(map(str, (s.body["prompt"] for s in sent))) == [
        "['a text', 'another text']",
        "[[15339, 1917], [1, 2], [3]]",
    ]


async def test_a_caller_in_a_hurry_never_cuts_the_shared_call_short_for_the_others():
    seen: list[float] = []
    vendor = Vendor()

    async def embed(c: VendorCall) -> VendorResult:
        seen.append(c.timeout_s)
        return await vendor.embed(c)

    batcher = EmbeddingBatcher()
    hurried = VendorCall(model="e", body={"model": "e", "input": "a"}, api_key="k", timeout_s=0.2)
    patient = VendorCall(model="e", body={"model": "e", "input": "b"}, api_key="k", timeout_s=30)
    await asyncio.gather(
        *(batcher.embed(("k",), c, embed, window_ms=20, max_size=64) for c in (hurried, patient))
    )
    assert seen == [30]


async def test_a_caller_that_gives_up_before_the_window_goes_out_is_never_sent() -> None:
    vendor, batcher = Vendor(), EmbeddingBatcher()
    quitter = asyncio.create_task(batcher.embed(("k",), call("gone"), vendor.embed, 50, 64))
    stayer = asyncio.create_task(batcher.embed(("k",), call("here"), vendor.embed, 50, 64))
    await asyncio.sleep(0.01)
    quitter.cancel()
    await stayer
    assert vendor.calls == [["here"]], "never paid for"


async def test_a_caller_that_gives_up_inside_the_shared_call_is_told_of_its_share() -> None:
    """Its inputs went out: the vendor bills them, so its share must reach the ledger."""
    release = asyncio.Event()
    vendor = Vendor()

    async def slow(c: VendorCall) -> VendorResult:
        await release.wait()
        return await vendor.embed(c)

    batcher = EmbeddingBatcher()
    shares: list[asyncio.Future[VendorResult]] = []
    quitter = asyncio.create_task(
        batcher.embed(("k",), call("gone"), slow, 10, 64, orphaned=shares.append)
    )
    stayer = asyncio.create_task(batcher.embed(("k",), call("here!"), slow, 10, 64))
    await asyncio.sleep(0.05)  # the window went out; the vendor is answering
    quitter.cancel()
    await asyncio.sleep(0)
    release.set()
    mine = await stayer
    [share] = shares
    theirs = await share
    assert vendor.calls == [["gone", "here!"]]
    assert theirs.usage.input_tokens + mine.usage.input_tokens == 9
    assert theirs.usage.input_tokens == 4


async def test_one_shared_call_is_one_health_outcome_whatever_it_carried() -> None:
    """Eight requests in one window are one vendor call: one outcome for the metrics and
    the breaker, so one failed call never counts as eight (and opens no breaker alone)."""
    import time

    from agents.dispatch import Dispatcher
    from agents.keys import KeyPool
    from schemas.config import Batching, Candidate
    from schemas.envelope import HealthEvent
    from tests.support.envelopes import request_envelope

    release = asyncio.Event()

    class Hanging(Vendor):
        """Slower to answer than its operator's ``timeout_s``."""

        config = SimpleNamespace(timeout_s=0.2)

        async def embed(self, call: VendorCall) -> VendorResult:
            self.calls.append(inputs_of(call.body))
            await release.wait()
            raise VendorUnavailable("too late")

    for fail in (False, True, "hangs"):
        seen: list[HealthEvent] = []

        async def on_health(ev: HealthEvent, into: list[HealthEvent] = seen) -> None:
            into.append(ev)

        vendor = Hanging() if fail == "hangs" else Vendor(fail=bool(fail))
        dispatch = Dispatcher(
            {"a": vendor}, {"a": KeyPool(["k"])}, on_health,
            batching={"e": Batching(window_ms=50, max_size=64)}, max_rounds=1,
        )  # fmt: skip
        envs = [
            request_envelope(
                alias="e",
                endpoint="embeddings",
                body={"model": "e", "input": f"text {i}"},
                deadline_ms=int((time.time() + 5) * 1000),
            )
            for i in range(8)
        ]
        cand = [Candidate(vendor="a", model="emb")]
        outs = await asyncio.gather(*(dispatch.run(e, cand, None) for e in envs))
        assert all((o.error is not None) == bool(fail) for o in outs)
        assert len(vendor.calls) == 1 and len(seen) == 1 and seen[0].ok != bool(fail)
    assert seen[0].error_code == "vendor_unavailable"
    release.set()


async def test_callers_cut_from_a_shared_call_by_their_own_deadlines_are_one_outcome() -> None:
    """A caller cut by its own deadline says nothing of the vendor while the call goes on
    for others (who report what came of it); the last to leave reports the call."""
    import time

    from agents.dispatch import Dispatcher
    from agents.keys import KeyPool
    from schemas.config import Batching
    from schemas.envelope import HealthEvent
    from tests.support.envelopes import request_envelope

    release = asyncio.Event()

    class Slow(Vendor):
        sent = 0

        async def embed(self, call: VendorCall) -> VendorResult:
            self.sent += 1
            await release.wait()
            return await super().embed(call)

    def embedding(text: str, seconds: float) -> Any:
        body = {"model": "e", "input": text}
        deadline_ms = int((time.time() + seconds) * 1000)
        return request_envelope(
            alias="e", endpoint="embeddings", body=body, deadline_ms=deadline_ms
        )

    for answered in (True, False):
        release.clear()
        seen: list[HealthEvent] = []

        async def on_health(ev: HealthEvent, into: list[HealthEvent] = seen) -> None:
            into.append(ev)

        vendor = Slow()
        dispatch = Dispatcher(
            {"v": vendor}, {"v": KeyPool(["k"])}, on_health,
            batching={"e": Batching(window_ms=20, max_size=64)}, max_rounds=1,
        )  # fmt: skip
        hurried = asyncio.create_task(dispatch.run(embedding("h", 0.2), [CAND], None))
        patient = asyncio.create_task(
            dispatch.run(embedding("p", 9 if answered else 0.4), [CAND], None)
        )
        cut = await hurried
        assert cut.error is not None and cut.error.code == "deadline_exceeded"
        assert seen == [], "the call goes on for the patient caller"
        if answered:
            release.set()  # the vendor answers the patient caller
        out = await patient
        assert (out.error is None) == answered and vendor.sent == 1
        want = [(True, None)] if answered else [(False, "deadline_exceeded")]
        assert [(e.ok, e.error_code) for e in seen] == want
        release.set()


async def test_a_shared_call_names_no_end_user_when_its_callers_have_different_ones() -> None:
    vendor = Vendor()
    batcher = EmbeddingBatcher()

    def asked(text: str, user: str | None) -> VendorCall:
        body = {"model": "e", "input": text, **({"user": user} if user else {})}
        return VendorCall(model="e", body=body, api_key="k")

    async def window(*calls: VendorCall) -> dict[str, Any]:
        await asyncio.gather(*(batcher.embed(("k",), c, vendor.embed, 50, 8) for c in calls))
        return vendor.bodies[-1]

    mixed = await window(asked("a", "alice@a"), asked("b", "mallory@b"))
    assert "user" not in mixed and mixed["input"] == ["a", "b"]
    same = await window(asked("c", "alice@a"), asked("d", "alice@a"))
    assert same["user"] == "alice@a"


async def test_a_shared_call_that_breaks_is_named_by_its_kind_not_its_text():
    """Every caller of the window hears it: the text may quote another caller's answer."""

    async def breaking(c: VendorCall) -> VendorResult:
        raise KeyError("another tenant's input: the secret plan")

    batcher = EmbeddingBatcher()
    errors = await asyncio.gather(
        *(batcher.embed(("k",), call([text]), breaking, window_ms=10, max_size=8) for text in "ab"),
        return_exceptions=True,
    )
    assert [str(e) for e in errors] == ["batched call failed (KeyError)"] * 2


# --- a window of one caller; the parts of a shared answer ---------------------------------


async def test_a_lone_caller_s_request_goes_as_it_came() -> None:
    """A string stays a string: a server that takes no list prompt (Ollama's
    /v1/completions) answers a lone caller as it would unbatched."""
    from agents.batcher import COMPLETIONS

    sent: list[dict[str, Any]] = []

    async def complete(c: VendorCall) -> VendorResult:
        sent.append(c.body)
        if not isinstance(c.body["prompt"], str):
            raise VendorBadRequest("HTTP 400: json: cannot unmarshal array into prompt")
        return VendorResult({"choices": [{"index": 0, "text": "ok"}]}, Usage(input_tokens=3))

    batcher = EmbeddingBatcher()
    body = {"model": "m", "prompt": "def fib(", "suffix": "\n", "user": "u"}
    lone = VendorCall(model="x", body=body, api_key="k")
    result = await batcher.embed(("k",), lone, complete, 10, 8, COMPLETIONS)
    assert sent == [body] and result.body["choices"][0]["text"] == "ok"
    vendor = Vendor()
    await batcher.embed(("e",), call("solo"), vendor.embed, 10, 8)
    assert vendor.bodies == [{"model": "e", "input": "solo"}]


async def test_callers_of_a_shared_call_refused_for_its_list_are_each_answered() -> None:
    """The shared call's 400 sends them again, each at last with its own request."""
    from agents.batcher import COMPLETIONS

    sent: list[Any] = []

    async def complete(c: VendorCall) -> VendorResult:
        sent.append(c.body["prompt"])
        if not isinstance(c.body["prompt"], str):
            raise VendorBadRequest("HTTP 400: json: cannot unmarshal array into prompt")
        return VendorResult({"choices": [{"index": 0, "text": c.body["prompt"]}]}, Usage())

    batcher = EmbeddingBatcher()
    asks = [VendorCall(model="x", body={"prompt": p}, api_key="k") for p in ("a", "b")]
    results = await asyncio.gather(
        *(batcher.embed(("k",), c, complete, 10, 8, COMPLETIONS) for c in asks)
    )
    assert [r.body["choices"][0]["text"] for r in results] == ["a", "b"]
    assert sent == [["a", "b"], "a", "b"]


def azure_answer(prompts: list[str]) -> VendorResult:
    """Azure OpenAI's legacy completion: a prompt filter verdict per prompt of the call."""
    body = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "instruct",
        "prompt_filter_results": [
            {"prompt_index": i, "content_filter_results": {"self_harm": {"severity": p}}}
            for i, p in enumerate(prompts)
        ],
        "choices": [{"index": i, "text": f"ans:{p}"} for i, p in enumerate(prompts)],
        "x_vendor_debug": {"prompts": prompts},  # a field nobody can cut by caller
    }
    return VendorResult(body, Usage(input_tokens=3 * len(prompts)))


def test_each_part_of_a_shared_answer_has_its_own_prompt_filter_results_only() -> None:
    """Another caller's (another tenant's) prompt-filter verdicts never reach a caller, and
    its own are numbered as its prompts are; a field that cannot be cut is left out."""
    from agents.batcher import COMPLETIONS, split

    result = azure_answer(["secret", "hello", "world"])
    a, b = split(result, [["secret"], ["hello", "world"]], COMPLETIONS)
    assert a.body["prompt_filter_results"] == [
        {"prompt_index": 0, "content_filter_results": {"self_harm": {"severity": "secret"}}}
    ]
    assert [
        (f["prompt_index"], f["content_filter_results"]["self_harm"]["severity"])
        for f in b.body["prompt_filter_results"]
    ] == [(0, "hello"), (1, "world")]
    assert [(c["index"], c["text"]) for c in b.body["choices"]] == [
        (0, "ans:hello"),
        (1, "ans:world"),
    ]
    for part in (a, b):
        assert "x_vendor_debug" not in part.body
        assert {k: part.body[k] for k in ("id", "object", "created", "model")} == {
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "instruct",
        }  # fmt: skip
    [alone] = split(result, [["secret", "hello", "world"]], COMPLETIONS)
    assert alone.body == result.body, "a lone caller's answer is all its own"


# --- a shared call refused: again in halves, or every caller's 400 -----------------------


class Dense(Vendor):
    """OpenAI's 300,000 tokens a request, for text denser than four characters a token
    (here ``limit`` tokens, a character each): the batcher's estimate lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    async def embed(self, call: VendorCall) -> VendorResult:
        if (asked := sum(len(t) for t in inputs_of(call.body))) > self.limit:
            self.calls.append(inputs_of(call.body))
            err = VendorBadRequest(f"HTTP 400: Requested {asked} tokens, max {self.limit}")
            err.vendor_code = "max_tokens_per_request"
            raise err
        return await super().embed(call)


async def test_a_window_over_the_vendor_s_tokens_per_request_goes_again_in_halves() -> None:
    vendor, batcher = Dense(limit=100), EmbeddingBatcher()
    texts = [c * 20 for c in "abcdefgh"]  # 160 tokens at the vendor, 48 as estimated
    results = await asyncio.gather(
        *(batcher.embed(("k",), call(t), vendor.embed, 10, 64) for t in texts)
    )
    assert [len(c) for c in vendor.calls] == [8, 4, 4], "not one call a caller"
    assert [r.body["data"][0]["embedding"] for r in results] == [[20.0]] * 8


async def test_one_caller_s_too_long_input_is_found_in_halves() -> None:
    vendor, batcher = TooLong(), EmbeddingBatcher()
    texts = ["a", "b", "c", "x" * 20, "d", "e", "f", "g"]
    results = await asyncio.gather(
        *(batcher.embed(("k",), call(t), vendor.embed, 10, 64) for t in texts),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == ["VendorResult"] * 3 + ["VendorBadRequest"] + [
        "VendorResult"
    ] * 4
    assert [len(c) for c in vendor.calls] == [8, 4, 4, 2, 2, 1, 1]


async def test_a_400_blaming_a_parameter_they_share_is_every_caller_s_at_once() -> None:
    """Every caller of the window asked the same ``dimensions`` (it is in the key): each
    hears the vendor's 400, and nobody is sent again."""

    async def refusing(c: VendorCall) -> VendorResult:
        sent.append(inputs_of(c.body))
        err = VendorBadRequest("HTTP 400: this model does not take dimensions", param="dimensions")
        err.vendor_code = "invalid_value"
        raise err

    sent: list[list[Any]] = []
    batcher = EmbeddingBatcher()
    errors = await asyncio.gather(
        *(batcher.embed(("k",), call(t), refusing, 10, 64) for t in "abcd"),
        return_exceptions=True,
    )
    assert sent == [["a", "b", "c", "d"]]
    assert [(type(e), e.param, e.vendor_code) for e in errors] == [  # type: ignore[union-attr]
        (VendorBadRequest, "dimensions", "invalid_value")
    ] * 4


async def test_a_shared_call_no_caller_hears_is_reported_once() -> None:
    """Refused for an input or answered unsplittably, the shared call is still one call
    of the vendor's: one of its callers reports it, whatever comes of each after."""
    from schemas.errors import RelayError

    for vendor in (TooLong(), Skipping()):
        heard: list[str] = []

        async def reported(started: float, err: RelayError, into: list[str] = heard) -> None:
            into.append(err.code)

        batcher = EmbeddingBatcher()
        await asyncio.gather(
            *(
                batcher.embed(("k",), call(t), vendor.embed, 10, 64, reported=reported)
                for t in ("fine", "x" * 20 if isinstance(vendor, TooLong) else "")
            ),
            return_exceptions=True,
        )
        assert len(vendor.calls) == 3
        want = "vendor_bad_request" if isinstance(vendor, TooLong) else "vendor_unavailable"
        assert heard == [want], "the shared call; each caller's own call is its own to report"


# --- a window waiting for the vendor's RPM still takes callers ---------------------------


async def test_callers_arriving_while_a_window_waits_for_the_rpm_go_with_it() -> None:
    vendor, batcher = Vendor(), EmbeddingBatcher()
    asked: list[list[Any]] = []
    release = asyncio.Event()

    async def admit(tickets: list[Any]) -> None:
        asked.append(tickets)
        await release.wait()

    def ask(text: str) -> Any:
        return batcher.embed(("k",), call(text), vendor.embed, 10, 64, admit=admit, ticket=text)

    first = asyncio.create_task(ask("a"))
    await asyncio.sleep(0.05)  # its window closed and waits for the RPM
    later = [asyncio.create_task(ask(t)) for t in "bc"]
    await asyncio.sleep(0.05)  # (a window of their own would have closed by now)
    release.set()
    await asyncio.gather(first, *later)
    assert vendor.calls == [["a", "b", "c"]] and asked == [["a"]]


async def test_a_waiting_window_s_refusal_fails_only_the_callers_it_waited_for() -> None:
    """The RPM could not let it out by its first caller's deadline: a caller that joined
    it later may wait longer, and does, on a window of its own."""
    from schemas.errors import RateLimited

    vendor, batcher = Vendor(), EmbeddingBatcher()
    asked: list[list[Any]] = []

    async def admit(tickets: list[Any]) -> None:
        asked.append(tickets)
        if len(asked) == 1:
            await asyncio.sleep(0.1)
            raise RateLimited("rate limited: past the request's deadline", retry_after=1)

    async def ask(text: str) -> VendorResult:
        return await batcher.embed(
            ("k",), call(text), vendor.embed, 10, 64, admit=admit, ticket=text
        )

    first = asyncio.create_task(ask("a"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(ask("b"))
    refused, answered = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(refused, RateLimited) and isinstance(answered, VendorResult)
    assert asked == [["a"], ["b"]] and vendor.calls == [["b"]]


async def test_a_window_whose_callers_all_left_its_wait_takes_nobody_more() -> None:
    vendor, batcher = Vendor(), EmbeddingBatcher()
    asked: list[list[Any]] = []

    async def admit(tickets: list[Any]) -> None:
        asked.append(tickets)
        if len(asked) == 1:
            await asyncio.Event().wait()  # never: its caller gives up

    def ask(text: str) -> Any:
        return batcher.embed(("k",), call(text), vendor.embed, 10, 64, admit=admit, ticket=text)

    gone = asyncio.create_task(ask("gone"))
    await asyncio.sleep(0.05)
    gone.cancel()
    await asyncio.sleep(0)
    assert (await ask("here")).body["data"][0]["embedding"] == [4.0]
    assert asked == [["gone"], ["here"]] and vendor.calls == [["here"]]


async def test_a_full_window_waiting_for_the_rpm_sends_later_callers_to_the_next() -> None:
    vendor, batcher = Vendor(), EmbeddingBatcher()
    release = asyncio.Event()

    async def admit(tickets: list[Any]) -> None:
        await release.wait()

    def ask(text: str) -> Any:
        return batcher.embed(("k",), call(text), vendor.embed, 10, 2, admit=admit, ticket=text)

    tasks = [asyncio.create_task(ask(t)) for t in "ab"]  # full: it waits for the RPM
    await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(ask(t)) for t in "cd"]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(vendor.calls) == [["a", "b"], ["c", "d"]]
