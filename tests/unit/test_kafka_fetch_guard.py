"""A fetched record batch aiokafka cannot read (a header key that is not UTF-8) is
reported and stepped over by the fetch guard, through aiokafka's own fetch classes."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy, _DefaultRecordBatchPy
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

from schemas.envelope import DeadLetter
from streams import fetch_guard
from streams.fetch_guard import AiokafkaChanged, Unreadable
from streams.wiring import unreadable

TP = TopicPartition("relay.requests", 3)


def batch(base: int, values: list[bytes], poison: int | None = None) -> bytes:
    """A v2 batch of ``values`` from offset ``base``; the record at index ``poison`` has
    the header key b"\\xff" (legal on the wire, with a valid CRC)."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i, value in enumerate(values):
        headers = [("Z", b"v")] if i == poison else []
        builder.append(i, timestamp=None, key=b"k", value=value, headers=headers)
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base)
    if poison is not None:
        buf[buf.index(b"Z\x02v")] = 0xFF
        crc = calc_crc32c(bytes(buf[_DefaultRecordBatchPy.ATTRIBUTES_OFFSET :]))
        struct.pack_into(">I", buf, _DefaultRecordBatchPy.CRC_OFFSET, crc)
    return bytes(buf)


@pytest.fixture
def reported() -> Iterator[list[Unreadable]]:
    got: list[Unreadable] = []
    fetch_guard.install(got.append)
    yield got
    fetch_guard.uninstall()


def partition_records(data: bytes, fetch_offset: int = 0) -> Any:
    """As ``Fetcher._proc_fetch_request`` builds them, by the module's names."""
    records = fetcher.MemoryRecords(data)
    return fetcher.PartitionRecords(TP, records, [], fetch_offset, None, None, True, 0)


def test_unguarded_aiokafka_raises_on_the_record() -> None:
    """What the guard is for: the C reader refuses the header key, and the position
    stays where it was, so the next fetch meets it again."""
    records = partition_records(batch(0, [b"a", b"b", b"c"], poison=1))
    with pytest.raises(UnicodeDecodeError):
        list(records)


def test_the_records_after_the_bad_one_are_reported_and_the_position_moves_past(
    reported: list[Unreadable],
) -> None:
    poisoned = batch(0, [b"a", b"b", b"c"], poison=1)
    records = partition_records(poisoned + batch(3, [b"d", b"e"]))
    assert [r.value for r in records] == [b"a", b"d", b"e"], "the readable ones delivered"
    assert records.next_fetch_offset == 5
    [bad] = reported
    assert (bad.topic, bad.partition, bad.first, bad.last) == ("relay.requests", 3, 1, 2)
    assert bad.error.startswith("UnicodeDecodeError:")
    assert bad.raw == poisoned, "the whole batch, as on the wire"


def test_a_fetch_that_starts_inside_the_batch_reports_from_there(
    reported: list[Unreadable],
) -> None:
    records = partition_records(batch(10, [b"a", b"b", b"c", b"d"], poison=3), fetch_offset=12)
    assert [r.offset for r in records] == [12]
    assert [(b.first, b.last) for b in reported] == [(13, 13)]


def test_a_bad_record_before_the_fetch_position_hides_only_what_follows_it(
    reported: list[Unreadable],
) -> None:
    """Fetched from offset 2, a batch 0-2 bad at 1: offset 2 could not be read either."""
    records = partition_records(batch(0, [b"a", b"b", b"c"], poison=1), fetch_offset=2)
    assert list(records) == []
    assert [(b.first, b.last) for b in reported] == [(2, 2)]
    assert records.next_fetch_offset == 3


def test_a_batch_read_before_the_fetch_position_is_not_reported(
    reported: list[Unreadable],
) -> None:
    records = partition_records(batch(0, [b"a", b"b"], poison=1), fetch_offset=2)
    assert list(records) == [] and reported == []


async def test_the_consumers_position_moves_past_the_batch(reported: list[Unreadable]) -> None:
    """Through aiokafka's FetchResult, as ``getmany`` drains it: the records before the
    bad one are handed over and the position is past the batch (it stayed at 0)."""
    subscriptions = SubscriptionState()
    subscriptions.assign_from_user({TP})
    assignment = subscriptions.subscription.assignment  # type: ignore[union-attr]
    assignment.state_value(TP).reset_to(0)
    records = partition_records(batch(0, [b"a", b"b", b"c"], poison=1))
    result = FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
    assert [r.offset for r in result.getall()] == [0]
    assert assignment.state_value(TP).position == 3
    assert len(reported) == 1


def test_a_report_that_fails_never_stops_the_fetch() -> None:
    def broken(bad: Unreadable) -> None:
        raise RuntimeError("no producer")

    fetch_guard.install(broken)
    try:
        records = partition_records(batch(0, [b"a", b"b"], poison=0) + batch(2, [b"c"]))
        assert [r.value for r in records] == [b"c"]
    finally:
        fetch_guard.uninstall()


def test_a_fetcher_shaped_otherwise_fails_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    class Reshaped:
        def __init__(self, tp: Any, records: Any, fetch_offset: int) -> None: ...

    reshaped = {**fetch_guard._ORIGINAL, "PartitionRecords": Reshaped}
    monkeypatch.setattr(fetch_guard, "_ORIGINAL", reshaped)
    monkeypatch.setattr(fetcher, "PartitionRecords", Reshaped)
    with pytest.raises(AiokafkaChanged, match=r"PartitionRecords\.__init__ takes"):
        fetch_guard.install()
    assert fetcher.PartitionRecords is Reshaped, "nothing patched"


def test_the_installed_aiokafka_fits_the_guard() -> None:
    fetch_guard.check()


def test_uninstall_gives_aiokafka_its_own_classes_back() -> None:
    own = fetcher.PartitionRecords, fetcher.MemoryRecords
    fetch_guard.install()
    assert fetcher.PartitionRecords is not own[0]
    fetch_guard.uninstall()
    assert (fetcher.PartitionRecords, fetcher.MemoryRecords) == own


class Letters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    def dead_letter_soon(self, letter: DeadLetter) -> None:
        self.sent.append(letter)


def test_the_worker_dead_letters_an_unreadable_request_batch_with_where_it_was() -> None:
    sink = Letters()
    raw = batch(7, [b'{"correlation_id": "x"}', b"b"], poison=0)
    bad = Unreadable("relay.requests", 3, 7, 8, "UnicodeDecodeError: invalid start byte", raw)
    unreadable(sink, "relay.requests", bad)  # type: ignore[arg-type]
    [letter] = sink.sent
    assert (letter.topic, letter.partition, letter.offset) == ("relay.requests", 3, 7)
    assert "offsets 7 to 8" in letter.error and "UnicodeDecodeError" in letter.error
    assert letter.size == len(raw) and '{"correlation_id": "x"}' in letter.value


def test_an_unreadable_batch_of_the_relays_own_topics_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Letters()
    bad = Unreadable("relay.usage", 0, 5, 5, "UnicodeDecodeError: invalid start byte", b"")
    unreadable(sink, "relay.requests", bad)  # type: ignore[arg-type]
    assert sink.sent == []
    assert "skipped relay.usage[0]@5" in caplog.text
