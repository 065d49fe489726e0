"""The worker's metadata requests ask the broker to create nothing they name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiokafka import client
from aiokafka.protocol.metadata import MetadataRequest, MetadataRequest_v4, MetadataRequest_v5

from streams import topic_guard
from streams.fetch_guard import AiokafkaChanged


@pytest.fixture
def guarded() -> Iterator[None]:
    topic_guard.install()
    yield
    topic_guard.uninstall()


def test_aiokafka_asks_for_creation_unless_guarded() -> None:
    """What the guard is for: every client's metadata request, as built, lets a broker
    that creates topics on first use make each topic it names."""
    assert client.MetadataRequest(["gone"]).build(MetadataRequest_v5).allow_auto_topic_creation


@pytest.mark.parametrize("version", [MetadataRequest_v4, MetadataRequest_v5])
def test_guarded_the_clients_requests_create_nothing(guarded: None, version: type) -> None:
    built = client.MetadataRequest(["gone"]).build(version)
    assert built.topics == ["gone"] and built.allow_auto_topic_creation is False


def test_uninstall_gives_aiokafka_its_own_request_back() -> None:
    topic_guard.install()
    topic_guard.uninstall()
    assert client.MetadataRequest is MetadataRequest


def test_a_client_that_builds_its_requests_otherwise_fails_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Elsewhere:
        pass

    monkeypatch.setattr(client, "MetadataRequest", Elsewhere)
    with pytest.raises(AiokafkaChanged, match="not the protocol's MetadataRequest"):
        topic_guard.install()
    assert client.MetadataRequest is Elsewhere, "nothing patched"


def test_the_installed_aiokafka_fits_the_guard() -> None:
    topic_guard.check()
