"""The windows of this replica's recent predictions, by prediction_id: what feedback by id refers to.

Feedback may name a prediction (``prediction_id``) instead of sending its window again. The window is
remembered only by the replica that answered, in a bounded map (the oldest forgotten first): keeping it
in Redis too would add a write to every prediction, on the serving path, for the minority that gets
feedback by id. Feedback by id
that reaches another replica, or comes after the id was forgotten, is refused with a 422 that tells the
client to send ``flow_key`` and ``contexts`` instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from app.window import Window


class RecentWindows:
    """Up to ``capacity`` windows by prediction_id; the oldest goes when a new one would exceed it."""

    __slots__ = ("_windows", "capacity")

    def __init__(self, capacity: int) -> None:
        assert capacity >= 1, f"capacity must be >= 1, got {capacity}"
        self.capacity = capacity
        # an OrderedDict, not a dict: popping a dict's oldest entry over and over is O(n) between resizes
        self._windows: OrderedDict[str, Window] = OrderedDict()

    def remember(self, prediction_id: str, window: Window) -> None:
        """Keep ``window`` under ``prediction_id``; on the serving path, so a dict store and nothing more."""
        windows = self._windows
        windows[prediction_id] = window
        if len(windows) > self.capacity:
            windows.popitem(last=False)

    def remember_many(self, items: Iterable[tuple[str, Window]]) -> None:
        """``remember`` each (prediction_id, window) in turn, in one update (a batch request's)."""
        windows = self._windows
        windows.update(items)
        for _ in range(len(windows) - self.capacity):
            windows.popitem(last=False)

    def get(self, prediction_id: str) -> Window | None:
        return self._windows.get(prediction_id)

    def __len__(self) -> int:
        return len(self._windows)
