"""A broker that answers but refuses a topic the relay needs ends a command with the
broker's words on one line (exit 1), never a traceback, nor 'cannot reach Kafka'."""

from __future__ import annotations

import pytest
import typer

from cli.main import _on_kafka, console
from streams.topics import TopicsRefused


def test_a_refused_topic_is_one_line_naming_it() -> None:
    said = "topic relay.usage: TopicAuthorizationFailedError (not allowed to create it)"
    with console.capture() as out, pytest.raises(typer.Exit) as stop:
        with _on_kafka("127.0.0.1:9092"):
            raise TopicsRefused(said)
    assert stop.value.exit_code == 1
    assert out.get().strip() == said, "the broker's words, and not that it is unreachable"
