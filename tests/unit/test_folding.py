"""Flood folding: the first event at once, identical ones counted, one line per window."""

from __future__ import annotations

from tables.folding import OVERFLOW, Folder


def test_the_first_passes_and_identical_ones_are_counted_until_the_window_closes() -> None:
    folder: Folder[str] = Folder(window_s=10)
    assert folder.offer("k", "first", 0.0)
    assert not any(folder.offer("k", f"again {i}", 1.0 + i) for i in range(5))
    assert folder.due(9.9) == []
    assert folder.next_close() == 10.0
    [closed] = folder.due(10.0)
    assert (closed.key, closed.first, closed.count) == ("k", "first", 5)
    assert folder.due(11.0) == [], "each window is reported once"
    assert folder.offer("k", "next flood", 11.0), "a new window opens after the last closed"


def test_a_lone_event_leaves_nothing_to_report() -> None:
    folder: Folder[str] = Folder(window_s=1)
    assert folder.offer("k", "once", 0.0)
    assert folder.next_close() is None
    assert folder.due(5.0) == []


def test_different_events_fold_apart() -> None:
    folder: Folder[str] = Folder(window_s=10)
    assert folder.offer("a", "a1", 0.0) and folder.offer("b", "b1", 0.0)
    assert not folder.offer("a", "a2", 1.0)
    assert not folder.offer("b", "b2", 2.0) and not folder.offer("b", "b3", 3.0)
    assert {(f.key, f.count) for f in folder.due(10.0)} == {("a", 1), ("b", 2)}


def test_a_late_event_closes_the_expired_window_before_opening_its_own() -> None:
    folder: Folder[str] = Folder(window_s=1)
    folder.offer("k", "first", 0.0)
    folder.offer("k", "folded", 0.5)
    assert folder.offer("k", "after", 1.5)
    [closed] = folder.due(1.5)
    assert (closed.first, closed.count) == ("first", 1)


def test_too_many_sources_share_one_overflow_window() -> None:
    folder: Folder[str] = Folder(window_s=10, max_open=2)
    assert folder.offer("a", "a", 0.0) and folder.offer("b", "b", 0.0)
    assert folder.offer("c", "c", 0.0), "the first beyond the limit opens the overflow window"
    assert not any(folder.offer(f"x{i}", "x", 1.0) for i in range(100))
    [overflow] = folder.due(10.0)
    assert (overflow.key, overflow.first, overflow.count) == (OVERFLOW, "c", 100)
