"""Repeated log lines (the Kafka client while its broker is down) are said once a window."""

from __future__ import annotations

import logging

import pytest

from streams import logs
from streams.logs import Repeats, quiet_repeats


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    return now


def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.client", level, __file__, 1, msg, args, None)


def test_the_first_of_a_kind_passes_the_rest_are_counted_and_told_later(clock):
    repeats = Repeats(window_s=30)
    passed = [
        r
        for r in (record("Unable connect to node %s: %s", 1, n) for n in range(60))
        if repeats.filter(r)
    ]
    assert [r.getMessage() for r in passed] == ["Unable connect to node 1: 0"]
    clock[0] += 30
    later = record("Unable connect to node %s: %s", 1, "refused")
    assert repeats.filter(later)
    assert later.getMessage() == (
        "Unable connect to node 1: refused (59 more like this in the last 30s)"
    )
    clock[0] += 31  # nothing held back since: said plainly
    quiet = record("Unable connect to node %s: %s", 1, "refused")
    assert repeats.filter(quiet) and quiet.getMessage() == "Unable connect to node 1: refused"


def test_other_messages_and_levels_are_not_held_back_by_a_repeat(clock):
    repeats = Repeats(window_s=30)
    assert repeats.filter(record("Unable to update metadata from %s", [1]))
    assert repeats.filter(record("Failed fetch messages from %s: %s", 1, "x"))
    assert repeats.filter(record("Unable to update metadata from %s", [1], level=logging.WARNING))
    assert not repeats.filter(record("Unable to update metadata from %s", [1]))
    percent = record("100% of %s", "calls")  # a template with a literal %: still formats
    assert repeats.filter(percent) and not repeats.filter(record("100% of %s", "calls"))


def test_the_kafka_client_s_own_loggers_are_folded(clock, caplog):
    repeats = quiet_repeats()
    try:
        from aiokafka import client
        from aiokafka.consumer import fetcher

        with caplog.at_level(logging.ERROR, logger="aiokafka"):
            for _ in range(50):  # the loggers the broker-down errors come from
                client.log.error("Unable to update metadata from %s", [1])
                fetcher.log.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
        assert [r.name for r in caplog.records] == ["aiokafka", "aiokafka.consumer.fetcher"]
    finally:
        for name in ["aiokafka", *logging.root.manager.loggerDict]:
            logging.getLogger(name).removeFilter(repeats)
