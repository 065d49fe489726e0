"""No Python exception text (a class name, a repr) reaches a client: a Messages request the
translation trips on is told where, in Anthropic's error shape; a vendor batch the relay
fails on tells its callers it failed, and only the log has why."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from agents.adapters.base import VendorCall
from agents.batch_lane import BatchLane
from agents.keys import KeyPool
from schemas.config import BatchLane as LaneRule
from schemas.config import Candidate
from schemas.envelope import Priority, RequestEnvelope
from schemas.errors import RelayError, VendorAnswerUnreadable
from tests.support.envelopes import request_envelope
from tests.support.gateway import client, gateway_app

MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 16}


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([{"role": "user", "content": [{"type": "image", "source": "x"}]}], "messages.0.content.0"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "see"},
                                             {"type": "image", "source": "x"}]},
            ],
            "messages.2.content.1",
        ),
    ],
)  # fmt: skip
async def test_a_malformed_block_is_an_anthropic_400_naming_it_without_python_in_it(
    messages: list[Any], where: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = gateway_app()
    caplog.set_level(logging.INFO, "relay.gateway")
    async with client(app) as http:
        reply = await http.post("/v1/messages", json={**MESSAGES, "messages": messages})
    said = reply.json()
    assert reply.status_code == 400, said
    assert said["type"] == "error" and said["error"]["type"] == "invalid_request_error"
    message = said["error"]["message"]
    assert message.startswith(f"{where}: malformed Messages request")
    assert "AttributeError" not in message and "'str' object" not in message
    assert "AttributeError" in caplog.text, "the detail is the log's"


async def test_count_tokens_says_the_same_without_python_in_it() -> None:
    app, _ = gateway_app()
    messages = [{"role": "user", "content": [{"type": "image", "source": "x"}]}]
    async with client(app) as http:
        reply = await http.post(
            "/v1/messages/count_tokens", json={**MESSAGES, "messages": messages}
        )
    message = reply.json()["error"]["message"]
    assert reply.status_code == 400 and message.startswith("messages.0.content.0: malformed")
    assert "AttributeError" not in message


CAND = Candidate(vendor="v", model="m", input_per_1m=1, output_per_1m=1)
SECRET_ISH = "vendor said <internal detail 42>"


class Broken:
    """A batch vendor on which the relay's own code trips: at submit, reading a poll's
    answer (the adapter), or using it (a list where results by id belong)."""

    def __init__(self, at: str) -> None:
        self.at = at

    async def submit_batch(self, calls: list[tuple[str, VendorCall]], api_key: str) -> str:
        if self.at == "submit":
            raise RuntimeError(SECRET_ISH)
        return "batch_1"

    async def poll_batch(self, batch_id: str, api_key: str) -> Any:
        if self.at == "answer":  # the adapter cannot read the vendor's answer
            raise KeyError(SECRET_ISH)
        return [SECRET_ISH]  # no .items(): an AttributeError in the lane, not the adapter

    async def cancel_batch(self, batch_id: str, api_key: str) -> None:
        pass


@pytest.mark.parametrize(
    ("at", "kind"),
    [("submit", RelayError), ("answer", VendorAnswerUnreadable), ("poll", VendorAnswerUnreadable)],
)
async def test_a_vendor_batch_the_relay_fails_on_tells_its_callers_no_python(
    at: str, kind: type[RelayError], caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Any] = []

    async def deliver(env: RequestEnvelope, cand: Candidate, out: Any) -> None:
        got.append(out)

    lane = BatchLane(
        {"v": Broken(at)}, {"v": KeyPool(["key"])}, LaneRule(max_size=2, poll_s=0.001), deliver
    )
    deadline = int((time.time() + 60) * 1000)
    for _ in range(2):
        lane.submit(request_envelope(priority=Priority.background, deadline_ms=deadline), CAND)
    for task in list(lane._tasks):
        await task
    assert len(got) == 2 and all(isinstance(r, kind) for r in got), got
    for err in got:
        said = str(err.to_dict())
        assert "it has been logged" in err.message
        assert SECRET_ISH not in said and "Error" not in err.message.replace("error", "")
        assert not any(name in said for name in ("RuntimeError", "AttributeError", "KeyError"))
    logged = {"submit": "RuntimeError", "answer": "KeyError", "poll": "AttributeError"}[at]
    assert logged in caplog.text, "the detail is the log's"
