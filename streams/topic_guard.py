"""The worker never makes a topic by naming it: its metadata requests ask for no creation.

A broker with ``auto.create.topics.enable`` (Apache's default, the embedded broker's and
compose's) makes any topic a metadata request names, with the broker's defaults.  Every
aiokafka client asks for that, and keeps each topic it ever sent to in the list it asks
about at every metadata refresh.  So a worker that had answered a gateway made the
gateway's reply topic again after the gateway deleted it at its stop: at the first late
answer, or at the next refresh (at most five minutes later) without any, one topic left
for good per gateway stop.  The relay creates every topic it uses itself
(``streams.topics.ensure_topics``), and an envelope's ``reply_to`` is the producer's to
create: one that does not exist is given up after ``REPLY_SEND_S``, as on a broker that
creates nothing.

``install`` replaces the ``MetadataRequest`` name of ``aiokafka.client``, which
``AIOKafkaClient`` builds its metadata requests with (the producers' and the consumer's),
by a subclass whose ``allow_auto_topic_creation`` defaults to False instead of True.
Process-wide; the worker process only.  ``install`` checks that aiokafka still builds its
requests so, and that the flag reaches the wire, and raises ``AiokafkaChanged`` if not:
an aiokafka upgrade that moves them fails the worker at its start.
"""

from __future__ import annotations

import inspect

import aiokafka
from aiokafka import client
from aiokafka.protocol.metadata import MetadataRequest as _MetadataRequest
from aiokafka.protocol.metadata import MetadataRequest_v5

from streams.fetch_guard import AiokafkaChanged


class _NothingCreated(_MetadataRequest):
    """aiokafka's ``MetadataRequest``, asking the broker to create no topic it names."""

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


def install() -> None:
    check()
    client.MetadataRequest = _NothingCreated  # type: ignore[misc]


def uninstall() -> None:
    """aiokafka's own requests again (for tests)."""
    client.MetadataRequest = _MetadataRequest  # type: ignore[misc]


def check() -> None:
    """Raise ``AiokafkaChanged`` unless aiokafka builds its client's metadata requests as
    this guard expects."""
    problems = []
    if client.MetadataRequest not in (_MetadataRequest, _NothingCreated):
        problems.append("aiokafka.client.MetadataRequest is not the protocol's MetadataRequest")
    names = getattr(getattr(client.AIOKafkaClient, "_metadata_update", None), "__code__", None)
    if names is None or "MetadataRequest" not in names.co_names:
        problems.append("AIOKafkaClient._metadata_update no longer builds a MetadataRequest")
    parameters = inspect.signature(_MetadataRequest.__init__).parameters
    if "allow_auto_topic_creation" not in parameters:
        problems.append("MetadataRequest no longer takes allow_auto_topic_creation")
    else:
        built = _NothingCreated(["t"]).build(MetadataRequest_v5)
        if getattr(built, "allow_auto_topic_creation", None) is not False:
            problems.append("MetadataRequest's allow_auto_topic_creation does not reach v5")
    if problems:
        raise AiokafkaChanged(
            f"the worker's guard against creating topics by naming them "
            f"(streams/topic_guard.py) does not fit aiokafka {aiokafka.__version__}: "
            + "; ".join(problems)
        )
