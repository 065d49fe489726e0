"""Ledger and audit lines the broker could not take are kept on disk, exactly, and a spill
file still being written by its process is never sent from under it."""

from __future__ import annotations

from pathlib import Path

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
