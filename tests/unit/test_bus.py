"""Reading a DescribeGroups answer: are workers in the requests consumer group?"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.bus import _workers_in


def described(error: int, state: str, members: list[Any]) -> list[Any]:
    return [SimpleNamespace(groups=[(error, "relay", state, "consumer", "faust", members, [])])]


def test_members_mean_workers_and_an_unknown_group_means_none() -> None:
    assert _workers_in(described(0, "Stable", [("member-1",)]))
    assert not _workers_in(described(0, "Dead", []))
    assert not _workers_in(described(0, "Empty", []))
    assert not _workers_in([])


def test_a_rebalance_counts_as_workers_rejoining() -> None:
    assert _workers_in(described(0, "PreparingRebalance", []))
    assert _workers_in(described(0, "CompletingRebalance", []))


def test_an_error_answer_cannot_tell_so_it_raises() -> None:
    with pytest.raises(RuntimeError):
        _workers_in(described(14, "", []))  # COORDINATOR_LOAD_IN_PROGRESS


async def test_a_ledger_line_the_producer_refuses_is_logged_never_a_client_s_500(caplog) -> None:
    from aiokafka.errors import KafkaTimeoutError

    from gateway.bus import Bus
    from schemas.envelope import UsageEvent
    from streams.topics import Topics

    class Refusing:
        async def send(self, *args: Any, **kwargs: Any) -> None:
            raise KafkaTimeoutError()

    bus = Bus("127.0.0.1:9", Topics("t"), "gw-1")  # never started
    await bus.ledger.stop()
    bus.ledger = Refusing()  # type: ignore[assignment]
    line = UsageEvent(event_id="e-lost", trace_id="t", tenant="a", key_id="k", alias="m")
    await bus.meter(line)  # does not raise
    for kafka in (bus.producer, bus.consumer):  # never started: closed all the same
        await kafka.stop()
    assert "e-lost" in caplog.text and "not written" in caplog.text
