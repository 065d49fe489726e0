"""Where the worker may write a reply (``reply_to``): a producer's own topic, a gateway's
or the Batch API's results; never a topic whose readers would take the reply for one of
their records, this deployment's or, on a shared cluster, another's.  The requests agent
dead-letters an envelope this refuses (tests/integration/test_dead_letter.py)."""

from __future__ import annotations

import pytest

from streams.topics import Topics
from streams.wiring import reply_refusal

TOPICS = Topics("relay")


@pytest.mark.parametrize(
    "reply_to",
    [
        "relay.batch-results",  # this deployment's Batch API results: the one own topic
        "relay.replies.gw-1",  # a gateway's
        "staging.replies.gw-2",  # another deployment's gateway: a reply it awaits by id
        "billing-service.answers",  # a producer's own topic
        "usage-reports",  # no relay suffix, just a word in it
    ],
)
def test_a_reply_may_go_to_a_reply_topic(reply_to: str) -> None:
    assert reply_refusal(reply_to, TOPICS) is None


@pytest.mark.parametrize(
    ("reply_to", "says"),
    [
        ("relay.usage", "relay's own topic"),
        ("relay.requests", "relay's own topic"),
        ("relay-tenant_spend-changelog", "relay's own topic"),
        # Another deployment sharing the cluster (RELAY_TOPIC_PREFIX=staging, other):
        ("other.usage", "another deployment"),
        ("staging.audit", "another deployment"),
        ("staging.requests", "another deployment"),
        ("staging.dead-letter", "another deployment"),
        ("staging.health", "another deployment"),
        ("staging.batch-results", "another deployment"),
        # Its spend table: a reply keyed by a tenant's name would reset the tenant's spend.
        ("other-relay-tenant_spend-changelog", "internal topic"),
        ("staging-relay-vendor_health-changelog", "internal topic"),
        ("some-streams-app-store-repartition", "internal topic"),
        ("relay-__assignor-__leader", "internal topic"),  # Faust's own
        ("__consumer_offsets", "Kafka internal"),
        ("__transaction_state", "Kafka internal"),
    ],
)
def test_a_reply_never_goes_into_a_topic_read_as_records_of_its_own(
    reply_to: str, says: str
) -> None:
    refusal = reply_refusal(reply_to, TOPICS)
    assert refusal is not None and says in refusal and reply_to in refusal


def test_the_relay_suffixes_follow_the_topic_declarations() -> None:
    """Under another prefix, this deployment's topics are its own and the default
    prefix's are another deployment's."""
    mine = Topics("staging")
    assert reply_refusal("staging.batch-results", mine) is None
    assert "own topic" in (reply_refusal("staging.usage", mine) or "")
    assert "another deployment" in (reply_refusal("relay.batch-results", mine) or "")
    for spec in TOPICS.all():
        assert reply_refusal(spec.name.replace("relay", "x", 1), mine) is not None, spec.name
