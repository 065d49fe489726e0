"""Repeated log lines (the Kafka client while its broker is down) are said once a window."""

from __future__ import annotations

import atexit
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
        atexit.unregister(repeats.flush)
        for name in ["aiokafka", *logging.root.manager.loggerDict]:
            logging.getLogger(name).removeFilter(repeats)


def producer_record(msg: str, *args: object, fold: object) -> logging.LogRecord:
    made = logging.LogRecord("streams.producers", logging.ERROR, __file__, 1, msg, args, None)
    made.fold_by = fold  # as logging's ``extra={FOLD_BY: ...}`` sets it
    return made


def test_lines_lost_are_never_folded_into_lines_kept_nor_one_topic_into_another(clock):
    """The ledger's producer says each kind of loss apart: after a 'kept' error, a
    'lost' one (the spill file could not be written) within the window still passes, and
    so does one for another topic; a second 'lost' for the same topic is folded."""
    repeats = Repeats(window_s=30)
    template = "%d lines for %s not written (%s); %s"
    usage = "relay.usage"
    kept = producer_record(template, 1, usage, "timeout", "kept in x", fold=(usage, True))
    lost = producer_record(template, 1, usage, "timeout", "lost: disk full", fold=(usage, False))
    audit = producer_record(
        template, 1, "relay.audit", "t", "kept in x", fold=("relay.audit", True)
    )
    again = producer_record(template, 1, usage, "timeout", "lost: disk full", fold=(usage, False))
    assert [repeats.filter(r) for r in (kept, lost, audit, again)] == [True, True, True, False]


def test_what_is_held_back_at_exit_is_said(clock, caplog):
    """A held count is told by the next record of its kind; when none comes, by
    ``flush`` (quiet_repeats runs it at exit)."""
    repeats = Repeats(window_s=30)
    logger = logging.getLogger("streams.producers")
    logger.addFilter(repeats)
    try:
        with caplog.at_level(logging.ERROR, logger="streams.producers"):
            for _ in range(3):
                logger.error("a line for %s was refused", "relay.audit")
            clock[0] += 5
            repeats.flush()
    finally:
        logger.removeFilter(repeats)
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "a line for relay.audit was refused",
        "2 more like 'a line for relay.audit was refused' held back in the last 5s",
    ]


def test_at_exit_each_kind_held_back_is_told_apart(clock, caplog):
    """Lines lost for the ledger and for the audit log are two kinds (``FOLD_BY``):
    ``flush`` tells each, naming its topic, and its lines pass the filter they are
    logged through (one summary never holds back another)."""
    repeats = Repeats(window_s=30)
    logger = logging.getLogger("streams.producers")
    logger.addFilter(repeats)
    template = "%d lines for %s not written (%s); %s"
    try:
        with caplog.at_level(logging.ERROR, logger="streams.producers"):
            for topic in ("relay.usage", "relay.audit"):
                for _ in range(3):
                    logger.error(template, 1, topic, "timeout", "lost", extra={"fold_by": topic})
            clock[0] += 5
            repeats.flush()
    finally:
        logger.removeFilter(repeats)
    told = [r for r in caplog.records if "held back" in r.getMessage()]
    assert [r.getMessage() for r in told] == [
        f"2 more like '1 lines for {topic} not written (timeout); lost' held back in the last 5s"
        for topic in ("relay.usage", "relay.audit")
    ]
    assert [r.fold_by for r in told] == ["relay.usage", "relay.audit"]
