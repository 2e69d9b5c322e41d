"""RecentWindows: what feedback by prediction_id finds, the oldest forgotten first."""

from __future__ import annotations

import numpy as np

from app.learning.recent import RecentWindows
from app.window import Window


def _window(i: int) -> Window:
    return Window(f"{i:064x}", None, 1, np.array([i], dtype=np.int64), np.full((1, 8), float(i)), [None])


def test_one_by_one_and_many_at_once_forget_the_same_oldest_windows() -> None:
    one, many = RecentWindows(capacity=5), RecentWindows(capacity=5)
    items = [(f"id{i}", _window(i)) for i in range(8)]
    for pid, window in items[:3]:
        one.remember(pid, window)
        many.remember(pid, window)
    for pid, window in items[3:]:
        one.remember(pid, window)
    many.remember_many(items[3:])
    assert len(one) == len(many) == 5
    for pid, window in items:
        assert one.get(pid) is many.get(pid)
        assert (many.get(pid) is window) == (pid not in ("id0", "id1", "id2"))


def test_remembering_an_id_again_keeps_the_newest_window() -> None:
    recent = RecentWindows(capacity=2)
    recent.remember_many([("a", _window(1)), ("b", _window(2)), ("a", _window(3))])
    assert len(recent) == 2
    found = recent.get("a")
    assert found is not None and found.timestamps.tolist() == [3]
