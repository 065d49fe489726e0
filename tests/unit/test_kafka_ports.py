"""The embedded broker's ports: never one port for both listeners, which Kafka refuses."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from streams.broker.embedded import EmbeddedKafka, free_ports


def a_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_saved_pair_of_one_port_twice_is_drawn_again(tmp_path: Path) -> None:
    """An earlier draw that gave both listeners one port was saved, and each start read
    it back (the port is free) until someone deleted the file."""
    port = a_free_port()
    (tmp_path / "ports").write_text(f"{port} {port}")
    kafka = EmbeddedKafka(tmp_path, cache_dir=tmp_path / "jars")
    broker, controller = kafka._ports()
    assert broker != controller
    assert (tmp_path / "ports").read_text() == f"{broker} {controller}", "the new pair kept"


def test_a_saved_pair_of_two_free_ports_is_kept(tmp_path: Path) -> None:
    pair = free_ports()
    (tmp_path / "ports").write_text(f"{pair[0]} {pair[1]}")
    assert EmbeddedKafka(tmp_path, cache_dir=tmp_path / "jars")._ports() == pair


def test_a_fresh_draw_never_gives_one_port_twice() -> None:
    """Both sockets are bound while the second port is drawn, so the system cannot hand
    the first out again (drawn one after the other, 18 pairs in 200 000 were equal)."""
    assert all(a != b for a, b in (free_ports() for _ in range(2000)))


@pytest.mark.parametrize("text", ["", "12345", "12345 abc", "1 2 3", "70000 70001", "\x00\x00"])
def test_a_ports_file_that_does_not_read_as_two_ports_is_drawn_again(
    tmp_path: Path, text: str
) -> None:
    """Torn by a crash as it was written (or otherwise unreadable): as if none were saved,
    never a ValueError at every start until someone deletes it."""
    (tmp_path / "ports").write_text(text)
    broker, controller = EmbeddedKafka(tmp_path, cache_dir=tmp_path / "jars")._ports()
    assert broker != controller
    assert (tmp_path / "ports").read_text() == f"{broker} {controller}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ports"], "no temporary file left"
