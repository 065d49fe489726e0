"""The embedded broker's pure parts."""

from __future__ import annotations

from streams.broker.embedded import _kafka_uuid


def test_kafka_cluster_ids_never_look_like_a_command_line_option() -> None:
    ids = [_kafka_uuid() for _ in range(3000)]  # ~47 would start with "-" if unchecked
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
