"""Reading messages off the topics: what orjson wrote reads back, and an envelope whose
times no clock can hold is refused (dead-lettered) rather than failing in its handler."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.envelope import RequestEnvelope
from streams.codec import decode, encode
from tests.support.envelopes import request_envelope


def test_a_body_nested_deeper_than_pydantic_parses_reads_back_as_written() -> None:
    deep: Any = "bottom"
    for _ in range(230):  # orjson goes to ~254 levels, pydantic's parser to ~200
        deep = [deep]
    env = request_envelope(body={"model": "m", "metadata": {"deep": deep}, "messages": []})
    assert decode(RequestEnvelope, encode(env)) == env


def test_what_is_not_json_is_still_refused() -> None:
    with pytest.raises(ValidationError):
        decode(RequestEnvelope, b"{not json")


@pytest.mark.parametrize("field", ["deadline_ms", "created_ms"])
@pytest.mark.parametrize("value", [10**400, -1, 10**16])
def test_times_no_clock_holds_are_refused_on_reading(field: str, value: int) -> None:
    data = request_envelope().model_dump(mode="json")
    raw = orjson.dumps({**data, field: 0}).replace(
        f'"{field}":0'.encode(), f'"{field}":{value}'.encode()
    )
    with pytest.raises(ValidationError):
        decode(RequestEnvelope, raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"events": [{"vendor": "a", "model": "m", "ok": true, "latency_ms": NaN}]}',
        b'{"events": [{"vendor": "a", "model": "m", "ok": true, "latency_ms": 1, "cost": Infinity}]}',
    ],
)
def test_a_health_outcome_with_nan_or_infinity_is_refused(raw: bytes) -> None:
    """A table that folded one would write it to its changelog as null, which the record
    recovered after a restart cannot read: such a message is unreadable from the start."""
    from schemas.envelope import HealthBatch

    with pytest.raises(ValidationError):
        decode(HealthBatch, raw)


def test_a_ledger_line_with_a_non_finite_cost_is_refused() -> None:
    from schemas.envelope import UsageEvent

    line = b'{"event_id": "e", "tenant": "t", "key_id": "k", "alias": "a", "trace_id": "x", "cost": NaN}'
    with pytest.raises(ValidationError):
        decode(UsageEvent, line)
