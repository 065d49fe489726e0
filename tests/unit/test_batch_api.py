"""The Batch API's pure parts: reading an input file, and turning replies into output lines."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.batch_results import output_line
from gateway.edge import ROUTES
from schemas.batches import (
    BatchObject,
    FileObject,
    line_correlation,
    parse_correlation,
    read_input,
)
from schemas.envelope import ReplyEvent, RequestEnvelope
from schemas.errors import DeadlineExceeded, StoreUnavailable, VendorBadRequest
from tests.support.gateway import FakeBus, client, gateway_app

CHAT = "/v1/chat/completions"
validate_chat = ROUTES[CHAT][1]


def jsonl(*lines: Any) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines) + b"\n"


def chat_line(custom_id: str, content: str = "hi", **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def test_good_lines_come_back_numbered_and_validated() -> None:
    data = jsonl(chat_line("a"), b"", chat_line("b", "there"))
    lines, errors = read_input(data, CHAT, validate_chat)
    assert errors == []
    assert [(n, line.custom_id) for n, line in lines] == [(1, "a"), (3, "b")]
    assert lines[1][1].body["messages"][0]["content"] == "there"


def test_every_bad_line_is_reported_with_its_number() -> None:
    wrong_url = {**chat_line("c"), "url": "/v1/embeddings"}
    no_messages = {**chat_line("e"), "body": {"model": "gpt-4o-mini", "messages": []}}
    data = jsonl(
        chat_line("a"),
        b"{not json",
        wrong_url,
        chat_line("a"),  # the custom_id again
        chat_line("d", stream=True),
        no_messages,
        {"custom_id": "f", "method": "GET", "url": CHAT, "body": {}},
    )
    lines, errors = read_input(data, CHAT, validate_chat)
    assert [n for n, _ in lines] == [1]
    by_line = {e.line: e.message for e in errors}
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert "/v1/embeddings" in by_line[3]
    assert "custom_id `a`" in by_line[4]
    assert "streaming" in by_line[5]
    assert "messages" in by_line[6]
    assert all(e.code == "invalid_request" for e in errors)


def test_a_line_with_a_null_text_part_is_refused_naming_it() -> None:
    """At the upload, as the realtime route would: not sent to fail in a worker."""
    null_text = chat_line("b")
    null_text["body"]["messages"][0]["content"] = [
        {"type": "text", "text": "a"},
        {"type": "text", "text": None},
    ]
    lines, errors = read_input(jsonl(chat_line("a"), null_text), CHAT, validate_chat)
    assert [n for n, _ in lines] == [1]
    [error] = errors
    assert error.line == 2 and error.code == "invalid_request"
    assert error.message == "messages.0.content.1.text: must be a string"


def test_a_file_starting_with_a_utf8_bom_reads_as_without_it() -> None:
    """As a Windows editor saves "UTF-8 with BOM": line 1 is a request, not bad JSON;
    a BOM anywhere else is still the line's own."""
    data = b"\xef\xbb\xbf" + jsonl(chat_line("a"), chat_line("b"))
    lines, errors = read_input(data, CHAT, validate_chat)
    assert errors == []
    assert [(n, line.custom_id) for n, line in lines] == [(1, "a"), (2, "b")]
    inner = jsonl(chat_line("a"), b"\xef\xbb\xbf" + orjson.dumps(chat_line("b")))
    assert [e.line for e in read_input(inner, CHAT, validate_chat)[1]] == [2]


def test_an_empty_file_is_an_error() -> None:
    lines, errors = read_input(b"\n\n", CHAT, validate_chat)
    assert lines == [] and [e.code for e in errors] == ["empty_file"]


def test_a_line_travels_as_batch_slash_index() -> None:
    cid = line_correlation("batch_abc", 41)
    assert parse_correlation(cid) == ("batch_abc", 41)
    assert parse_correlation("0f3a9c") is None  # an ordinary request
    assert parse_correlation("batch_abc/x") is None
    # Never a crash on a correlation id someone else posted to the topics.
    assert parse_correlation("batch_abc/²") is None  # a digit to str.isdigit, not to int()
    assert parse_correlation("batch_abc/" + "9" * 20) is None  # past any batch, and Redis


def test_an_answer_becomes_a_200_response_line() -> None:
    body = {"id": "chatcmpl-1", "choices": [{"message": {"content": "yo"}}]}
    line = output_line("a", ReplyEvent(correlation_id="batch_x/0", kind="final", body=body))
    assert line.ok and line.response is not None
    assert (line.custom_id, line.response.status_code, line.response.body) == ("a", 200, body)
    assert line.id.startswith("batch_req_") and line.error is None


def test_a_vendor_error_keeps_its_status_and_openai_body() -> None:
    err = VendorBadRequest("max_tokens is too large", param="max_tokens")
    line = output_line(
        "b", ReplyEvent(correlation_id="batch_x/1", kind="error", error=err.to_dict())
    )
    assert not line.ok and line.response is not None
    assert line.response.status_code == 400
    assert line.response.body["error"]["code"] == "vendor_bad_request"
    assert line.response.body["error"]["param"] == "max_tokens"


def test_an_expired_line_is_reported_as_openai_does() -> None:
    err = DeadlineExceeded("the request expired before a worker took it")
    line = output_line(
        "c", ReplyEvent(correlation_id="batch_x/2", kind="error", error=err.to_dict())
    )
    assert line.response is None and line.error is not None
    assert line.error.code == "batch_expired" and not line.ok


def test_lines_read_as_anthropic_batch_results() -> None:
    from gateway.anthropic_batch_routes import _result
    from schemas.batches import LineError, OutputLine, OutputResponse

    cancelled = OutputLine(custom_id="c", error=LineError(code="batch_cancelled", message="x"))
    expired = OutputLine(custom_id="e", error=LineError(code="batch_expired", message="x"))
    refused = OutputLine(
        custom_id="r",
        response=OutputResponse(
            status_code=429,
            request_id="q",
            body={"error": {"message": "slow down", "type": "rate_limit_error"}},
        ),
    )
    assert _result(cancelled) == {"custom_id": "c", "result": {"type": "canceled"}}
    assert _result(expired)["result"] == {"type": "expired"}
    assert _result(refused)["result"] == {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
    }
    body = {
        "id": "chatcmpl-1",
        "model": "claude-haiku",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    ok = OutputLine(
        custom_id="o", response=OutputResponse(status_code=200, request_id="q", body=body)
    )
    message = _result(ok)["result"]["message"]
    assert message["content"] == [{"type": "text", "text": "hi"}]
    assert message["usage"]["input_tokens"] == 5 and message["model"] == "claude-haiku"


def test_a_body_the_relay_cannot_send_on_is_refused_up_front() -> None:
    huge = b'{"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": '
    huge += b'{"model": "m", "seed": 1000000000000000000000000000000, "messages": '
    huge += b'[{"role": "user", "content": "hi"}]}}'
    lines, errors = read_input(jsonl(chat_line("ok"), huge), CHAT, validate_chat)
    assert [n for n, _ in lines] == [1]
    [error] = errors
    assert error.line == 2 and "cannot be sent" in error.message


def test_a_refusal_quoting_a_lone_surrogate_can_still_be_stored() -> None:
    """A line refused for a model name with a lone surrogate in it: its error line must
    encode, or the batch would be stored half made and never end."""
    from gateway.batch_submit import failed_line
    from schemas.errors import ModelNotFound

    line = failed_line("a", ModelNotFound("The model `\ud800` does not exist"), "req_1")
    stored = orjson.loads(line.model_dump_json())
    assert stored["response"]["body"]["error"]["message"] == "The model `\\ud800` does not exist"


async def test_only_an_unreachable_store_is_an_outage_a_refused_command_is_not() -> None:
    """An outage makes the results agent wait and retry; a command Redis refused would be
    refused forever, so it surfaces as itself and the agent moves on to the next result."""
    import pytest
    from redis.exceptions import ConnectionError, OutOfMemoryError, ResponseError

    from schemas.errors import StoreUnavailable
    from tables.batches import _Guard

    for outage in (ConnectionError("connection refused"), OutOfMemoryError("OOM command")):
        with pytest.raises(StoreUnavailable):
            async with _Guard(None):  # type: ignore[arg-type]
                raise outage
    with pytest.raises(ResponseError):
        async with _Guard(None):  # type: ignore[arg-type]
            raise ResponseError("ERR value is not an integer or out of range")


async def test_a_message_batch_s_results_url_is_on_the_public_address_when_set() -> None:
    """Behind a TLS proxy the gateway sees http://internal/: the SDK fetches results_url
    as given, so it must be the address clients reach."""
    from types import SimpleNamespace

    from gateway.anthropic_batch_routes import _shown
    from schemas.batches import BatchObject

    class Store:
        async def outcomes(self, batch_id: str) -> dict[str, int]:
            return {"succeeded": 1, "errored": 0, "canceled": 0, "expired": 0}

    batch = BatchObject(
        id="msgbatch_1",
        endpoint="/v1/messages",
        input_file_id="-",
        status="completed",
        created_at=1,
        completed_at=2,
    )
    batch.request_counts.total = 1
    for public, want in (
        ("", "http://10.0.0.5:8000/v1/messages/batches/msgbatch_1/results"),
        ("https://gw.example.com/relay/", "https://gw.example.com/relay/v1/messages/batches/msgbatch_1/results"),
    ):  # fmt: skip
        settings = SimpleNamespace(public_url=public)
        state = SimpleNamespace(batches=Store(), relay=SimpleNamespace(settings=settings))
        request = SimpleNamespace(
            app=SimpleNamespace(state=state), base_url="http://10.0.0.5:8000/"
        )
        shown = await _shown(request, batch)  # type: ignore[arg-type]
        assert shown["processing_status"] == "ended" and shown["results_url"] == want


def test_a_message_batch_result_keeps_the_vendor_s_cache_writes_the_file_does_not_show() -> None:
    """OpenAI's usage has no place for cache writes: the line keeps the vendor's counts
    for Anthropic's results, and OpenAI's output file shows the line without them."""
    from gateway.anthropic_batch_routes import _result
    from schemas.usage import Usage

    vendor = Usage(
        input_tokens=2510, output_tokens=5, cache_read_tokens=500, cache_write_tokens=2000
    )
    body = {
        "id": "chatcmpl-1",
        "model": "claude-haiku",
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": vendor.to_openai(),
    }
    event = ReplyEvent(correlation_id="batch_x/0", kind="final", body=body, usage=vendor)
    line = output_line("o", event)
    assert _result(line)["result"]["message"]["usage"] == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 500,
        "cache_creation_input_tokens": 2000,
    }
    assert "usage" not in orjson.loads(line.file_line()), "OpenAI's line, as OpenAI has it"


def test_a_line_asked_with_functions_is_answered_with_function_call() -> None:
    """The deprecated ``functions`` become tools on the way in; the line's correlation id
    remembers, so its output line says ``function_call`` as the chat route would."""
    functions = [{"name": "weather", "parameters": {"type": "object", "properties": {}}}]
    data = jsonl(chat_line("old", functions=functions), chat_line("new"))
    lines, errors = read_input(data, CHAT, validate_chat)
    assert errors == [] and [line.legacy for _, line in lines] == [True, False]
    assert "functions" not in lines[0][1].body and lines[0][1].body["tools"]
    cid = line_correlation("batch_abc", 0, legacy=True)
    assert parse_correlation(cid) == ("batch_abc", 0)
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    body = {"object": "chat.completion", "choices": [
        {"index": 0, "message": message, "finish_reason": "tool_calls"}]}  # fmt: skip
    legacy = output_line("old", ReplyEvent(correlation_id=cid, kind="final", body=body))
    assert legacy.response is not None
    choice = legacy.response.body["choices"][0]
    assert choice["message"]["function_call"] == {"name": "weather", "arguments": "{}"}
    assert choice["finish_reason"] == "function_call" and "tool_calls" not in choice["message"]
    plain = line_correlation("batch_abc", 1)
    kept = output_line("new", ReplyEvent(correlation_id=plain, kind="final", body=body))
    assert kept.response is not None and kept.response.body == body


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_line_with_a_number_json_does_not_have_fails_the_batch(number: bytes) -> None:
    """Read as JSON by a lenient parser, but no JSON number, as the realtime routes
    refuse it: named by its line at creation, so nothing of the batch is sent."""
    bad = orjson.dumps(chat_line("b", temperature=0.5)).replace(b"0.5", number)
    lines, errors = read_input(jsonl(chat_line("a"), bad), CHAT, validate_chat)
    assert [n for n, _ in lines] == [1]
    [error] = errors
    assert error.line == 2 and error.message == "body: NaN and Infinity are not JSON numbers"


class BlinkingStore:
    """A batch store that takes a batch and its refusals, then fails every read: Redis
    went away once the lines were out."""

    batch_kept_s = 3600

    def __init__(self, data: bytes, *, records: bool = True) -> None:
        self.data = data
        self.records = records  # False: recording a line fails too
        self.recorded: dict[int, Any] = {}

    async def hold(self, tenant: str, item_id: str, size: int, kept_s: int, quota: int) -> None:
        return None  # (the store blinks after this)

    async def file(self, tenant: str, file_id: str) -> FileObject:
        return FileObject(id=file_id, bytes=len(self.data), filename="in.jsonl", purpose="batch")

    async def content(self, tenant: str, file_id: str) -> bytes:
        return self.data

    async def create(self, tenant: str, batch: BatchObject, custom_ids: list[str]) -> None:
        return None

    async def record_many(self, batch_id: str, lines: dict[int, Any]) -> bool:
        if lines and not self.records:
            raise StoreUnavailable("the batch store (Redis) is unavailable; try again")
        self.recorded.update(lines)
        return True

    async def batch(self, tenant: str, batch_id: str) -> BatchObject | None:
        raise StoreUnavailable("the batch store (Redis) is unavailable; try again")

    async def outcomes(self, batch_id: str) -> dict[str, int]:
        raise StoreUnavailable("the batch store (Redis) is unavailable; try again")


class Bus(FakeBus):
    """Takes a batch's lines, but for those at the places in ``refused``."""

    refused: frozenset[int] = frozenset()

    async def publish_all(self, envs: list[RequestEnvelope]) -> list[Exception | None]:
        taken = [env for i, env in enumerate(envs) if i not in self.refused]
        self.published.extend(taken)
        return [
            ConnectionError("broker down") if i in self.refused else None for i in range(len(envs))
        ]


def blinking_gateway(
    store: BlinkingStore, refused: frozenset[int] = frozenset()
) -> tuple[Any, Bus]:
    app, _ = gateway_app()
    bus = app.state.relay.bus = Bus()
    bus.refused = refused
    app.state.batches = store
    return app, bus


@pytest.mark.parametrize("records", [True, False])
async def test_a_batch_whose_lines_are_out_is_created_though_the_store_blinks(
    records: bool,
) -> None:
    """The read after the lines went out fails (and, or not, the recording of a line the
    broker did not take, which then ends ``batch_expired`` with the batch's window): the
    batch exists all the same (its lines run and bill), so the client hears it as it
    stood, not a 503 that would have it make and pay for a second one."""
    data = jsonl(chat_line("a"), chat_line("b"), chat_line("c"))
    store = BlinkingStore(data, records=records)
    app, bus = blinking_gateway(store, refused=frozenset({1}))  # b: not queued, failed
    asked = {"input_file_id": "file-1", "endpoint": CHAT, "completion_window": "24h"}
    async with client(app) as http:
        reply = await http.post("/v1/batches", json=asked)
    assert reply.status_code == 200, reply.json()
    batch = reply.json()
    assert batch["status"] == "in_progress" and batch["id"].startswith("batch_")
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": int(records)}
    assert [e.correlation_id for e in bus.published] == [f"{batch['id']}/0", f"{batch['id']}/2"]


async def test_a_message_batch_whose_requests_are_out_is_created_though_the_store_blinks() -> None:
    params = {
        "model": "claude-haiku",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    refused = {**params, "model": "no-such-model"}
    asked = {
        "requests": [
            {"custom_id": "a", "params": params},
            {"custom_id": "b", "params": refused},
        ]
    }
    app, bus = blinking_gateway(BlinkingStore(b""))
    async with client(app) as http:
        reply = await http.post("/v1/messages/batches", json=asked)
    assert reply.status_code == 200, reply.json()
    shown = reply.json()
    assert shown["type"] == "message_batch" and shown["processing_status"] == "in_progress"
    assert shown["request_counts"] == {
        "processing": 1,
        "succeeded": 0,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert [e.correlation_id for e in bus.published] == [f"{shown['id']}/0"]


class _BatchHash:
    """Just enough of Redis for ``BatchStore.cancelled``: one batch's hash, and its
    expiry script (which records every line still out ``batch_expired`` and ends the
    batch ``expired``), counted."""

    def __init__(self, **fields: Any) -> None:
        self.fields = {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
        self.expiries: list[list[Any]] = []

    def register_script(self, source: str) -> Any:
        async def run(keys: list[str], args: list[Any]) -> int:
            if "ZSCORE" in source:
                return 0  # an ended batch's hold moved: none here (not a message batch)
            assert "LRANGE" in source, "only the expiry script is run here"
            if self.fields.get("status") not in (b"in_progress", b"cancelling"):
                return -1
            self.expiries.append(args)
            self.fields["status"] = b"expired"
            return 1

        return run

    async def hmget(self, key: str, names: list[str]) -> list[bytes | None]:
        return [self.fields.get(n) for n in names]

    async def hget(self, key: str, name: str) -> bytes | None:
        return self.fields.get(name)

    async def pexpire(self, key: str, ms: int) -> None:
        return None


def _store_of(status: str, expires_in_s: float) -> tuple[Any, _BatchHash]:
    import time

    from tables.batches import BatchStore

    now = int(time.time())
    meta = BatchObject(
        id="batch_e",
        endpoint=CHAT,
        input_file_id="file-1",
        status="in_progress",
        created_at=now - 86400,
        expires_at=int(now + expires_in_s),
    )
    redis = _BatchHash(status=status, meta=meta.model_dump_json(), tenant="t")
    return BatchStore(redis, "t", retention_s=600), redis  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "expires_in_s", "says"),
    [
        ("in_progress", 3600, False),
        ("in_progress", -60, False),  # past its window, within the grace: lines still land
        ("in_progress", -400, True),  # past the grace too: expired
        ("expired", -400, True),
        ("cancelling", 3600, True),
        ("cancelled", 3600, True),
        ("completed", -400, False),
    ],
)
async def test_an_expired_batch_is_cancelled_for_its_lines_not_sent_yet(
    status: str, expires_in_s: float, says: bool
) -> None:
    """An expired batch takes no more answers, so its lines not sent yet stay unsent, as a
    cancelled batch's do: the store says so, and one found past its window and grace is
    expired there and then (its lines recorded ``batch_expired``, so a worker's answer to
    one of them after this changes nothing in its error file)."""
    store, redis = _store_of(status, expires_in_s)
    assert await store.cancelled("batch_e") is says
    expired_now = status == "in_progress" and says
    assert len(redis.expiries) == expired_now
    if expired_now:
        assert redis.fields["status"] == b"expired"
        assert await store.cancelled("batch_e"), "and it stays so, with no second expiry"
        assert len(redis.expiries) == 1


async def test_a_batch_the_store_does_not_hold_is_not_cancelled() -> None:
    from tables.batches import BatchStore

    store = BatchStore(_BatchHash(), "t", retention_s=600)  # type: ignore[arg-type]
    assert await store.cancelled("batch_gone") is False
