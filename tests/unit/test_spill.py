"""Ledger and audit lines the broker could not take are kept on disk, exactly, and a spill
file still being written by its process is never sent from under it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams.producers
from streams.producers import BackgroundProducer, _claim, _lines

LINES = [
    ("relay.usage", b"tenant-a", b'{"event_id": "e1", "cost": 0.5}'),
    ("relay.audit", None, '{"detail": "caf\u00e9 \u2014 \u00fcber"}'.encode()),
]


async def test_kept_lines_read_back_as_sent_once_their_writer_is_gone(tmp_path: Path):
    producer = BackgroundProducer("127.0.0.1:9", tmp_path / "spill")  # never started
    kept, where = producer._keep(LINES[:1])
    producer._keep(LINES[1:])  # the same process appends to its one file
    [path] = (tmp_path / "spill").glob("*.jsonl")
    assert kept and str(path) in where and "sent again at the next start" in where
    assert not list((tmp_path / "spill").glob("*.tmp")), "named for others before it was locked"
    assert _claim(path) is None, "a live process's spill file was taken from it"
    assert producer._spill is not None
    producer._spill.close()  # its process has exited
    held = _claim(path)
    assert held is not None
    lines = list(_lines(held, path))
    held.close()
    assert lines == LINES
    await producer.producer.stop()


async def test_without_a_spill_directory_the_log_says_the_lines_are_lost(tmp_path: Path):
    producer = BackgroundProducer("127.0.0.1:9")
    assert producer._keep(LINES) == (False, "lost (no spill directory)")
    await producer.producer.stop()
    blocked = tmp_path / "file"
    blocked.write_text("")
    producer = BackgroundProducer("127.0.0.1:9", blocked / "spill")  # under a file
    kept, where = producer._keep(LINES)
    assert not kept and where.startswith("lost: the spill file could not be written")
    await producer.producer.stop()


def test_a_claimed_file_that_was_meanwhile_sent_and_removed_is_left_alone(tmp_path: Path):
    spill = tmp_path / "x.jsonl"
    spill.write_text("")
    opened = spill.open("rb")
    spill.unlink()  # another start sent it and removed it after this one listed it
    assert _claim(spill) is None
    opened.close()


class Taking:
    """An aiokafka producer that takes each line after a moment and delivers it, or,
    with the broker ``away``, never takes one."""

    def __init__(self, delivered: list[bytes], away: bool = False) -> None:
        self.delivered, self.away = delivered, away

    async def start(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        await asyncio.sleep(3600 if self.away else 0.01)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        self.delivered.append(value)
        return done

    async def stop(self) -> None:
        return None


def spilled(spill: Path, n: int) -> None:
    spill.mkdir(parents=True)
    with (spill / "20240101T000000-1-abcdef.jsonl").open("wb") as f:
        for i in range(n):
            entry = {"topic": "relay.usage", "key": "t", "value": f'{{"event_id": "e{i}"}}'}
            f.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))


async def producer_on(spill: Path, kafka: Taking) -> BackgroundProducer:
    producer = BackgroundProducer("127.0.0.1:9", spill)
    await producer.producer.stop()
    producer.producer = kafka  # type: ignore[assignment]
    await producer.start()
    return producer


async def test_a_resend_cut_short_by_a_stop_sends_each_line_once_over_two_starts(
    tmp_path: Path,
) -> None:
    spill, delivered = tmp_path / "spill", list[bytes]()
    spilled(spill, 50)
    first = await producer_on(spill, Taking(delivered))
    await asyncio.sleep(0.1)  # some of the file's lines are out...
    await first.stop()  # ...when the process is told to stop
    assert 0 < len(delivered) < 50
    second = await producer_on(spill, Taking(delivered))
    assert second._resending is not None
    await second._resending
    await asyncio.gather(*list(second._settling))
    await second.stop()
    assert sorted(delivered) == sorted({f'{{"event_id": "e{i}"}}'.encode() for i in range(50)})


async def test_lines_kept_again_while_the_broker_is_away_are_kept_once(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(streams.producers, "SEND_WAIT_S", 0.01)
    spill = tmp_path / "spill"
    spilled(spill, 50)
    producer = await producer_on(spill, Taking([], away=True))
    await asyncio.sleep(0.2)  # each line in turn times out and is kept again...
    await producer.stop()  # ...until the process is told to stop
    kept = [
        orjson.loads(raw)["value"]
        for p in spill.glob("*.jsonl")
        for raw in p.read_bytes().splitlines()
    ]
    assert sorted(kept) == sorted(f'{{"event_id": "e{i}"}}' for i in range(50))


class FlakyKafka:
    """Stands in for AIOKafkaProducer: delivers while ``up``, else fails retriably."""

    def __init__(self) -> None:
        self.up = False

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        from aiokafka.errors import KafkaTimeoutError

        delivery = asyncio.get_running_loop().create_future()
        if self.up:
            delivery.set_result(None)
        else:
            delivery.set_exception(KafkaTimeoutError())
        return delivery


async def test_a_line_sent_after_a_clean_stop_is_kept_though_the_process_spilled_before(
    tmp_path: Path,
):
    """A request still running when its worker stopped writes its ledger line late: it
    goes to a spill file, even when this process's earlier spill file is closed."""
    producer = BackgroundProducer("127.0.0.1:9", tmp_path, stop_grace_s=0.2)
    producer.producer = FlakyKafka()  # type: ignore[assignment]
    await producer.start()
    await producer.send("relay.usage", b'{"event_id": "early"}', key=b"t")
    await asyncio.sleep(0.05)  # delivery failed: spilled
    producer.producer.up = True  # type: ignore[attr-defined]
    await producer.stop()  # every line delivered or kept: a clean stop
    await producer.send("relay.usage", b'{"event_id": "late"}', key=b"t")
    assert {"early", "late"} <= kept_ids(tmp_path)


def kept_ids(spill_dir: Path) -> set[str]:
    return {
        orjson.loads(orjson.loads(line)["value"])["event_id"]
        for path in spill_dir.glob("*.jsonl")
        for line in path.read_bytes().splitlines()
    }


def unsent(kind: str, outcome: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "relay_unsent_lines_total", {"kind": kind, "outcome": outcome}
    )
    assert value is not None, (kind, outcome)
    return value


async def test_each_line_spilled_lost_or_refused_is_counted_by_kind(tmp_path: Path) -> None:
    """relay_unsent_lines_total{kind, outcome}: kind from the line's topic (under any
    prefix), ``other`` for any other topic; one count per line."""
    from aiokafka.errors import MessageSizeTooLargeError

    lines = [
        ("t.x.usage", b"a", b"{}"),
        ("t.x.usage", b"b", b"{}"),
        ("t.x.audit", b"started", b"{}"),
        ("t.x.dead-letter", b"t.x.requests", b"{}"),
        ("elsewhere", None, b"{}"),
    ]
    kinds = ("usage", "audit", "dead_letter", "other")
    before = {(k, o): unsent(k, o) for k in kinds for o in ("spilled", "lost", "refused")}

    def added(outcome: str) -> dict[str, float]:
        return {k: unsent(k, outcome) - before[(k, outcome)] for k in kinds}

    producer = BackgroundProducer("127.0.0.1:9", tmp_path / "spill")
    assert producer.keep(lines, "no broker")
    assert added("spilled") == {"usage": 2, "audit": 1, "dead_letter": 1, "other": 1}
    await producer.producer.stop()

    lost = BackgroundProducer("127.0.0.1:9")  # nowhere to spill
    assert not lost.keep(lines[:1], "no broker")
    assert added("lost") == {"usage": 1, "audit": 0, "dead_letter": 0, "other": 0}

    refused: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    lost.pending[refused] = lines[2]
    refused.set_exception(MessageSizeTooLargeError())
    lost._delivered(refused)  # the broker refused it for good after taking it

    async def too_large(*args: Any, **kwargs: Any) -> None:
        raise MessageSizeTooLargeError()

    lost.producer.send = too_large  # type: ignore[method-assign]
    try:
        await lost.send("t.x.dead-letter", b"{}")  # refused at once: raised to the caller
    except MessageSizeTooLargeError:
        pass
    assert added("refused") == {"usage": 0, "audit": 1, "dead_letter": 1, "other": 0}
    await lost.producer.stop()


@pytest.mark.parametrize("process", ["gateway.app", "streams.wiring"])
def test_every_unsent_series_is_there_from_the_start_in_each_process(process: str) -> None:
    """The gateway and the worker each serve the default registry on /metrics: each has
    the counter from what it imports (gateway.app, streams.wiring), at 0 for every kind
    and outcome before any loss, so an alert's rate() sees the first one."""
    import subprocess
    import sys

    scrape = (
        f"import {process}; from prometheus_client import REGISTRY, generate_latest; "
        "print(generate_latest(REGISTRY).decode())"
    )
    exposed = subprocess.run(
        [sys.executable, "-c", scrape], capture_output=True, text=True, check=True
    ).stdout
    for kind in ("usage", "audit", "dead_letter", "other"):
        for outcome in ("spilled", "lost", "refused"):
            assert f'relay_unsent_lines_total{{kind="{kind}",outcome="{outcome}"}} 0.0' in exposed
