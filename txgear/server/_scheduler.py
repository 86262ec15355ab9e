# -*- test-case-name: tests.test_server_lifecycle -*-
"""
The epoch scheduler: jobs that must not run before a given Unix time.

One timer for all of them, at the earliest due time. Removing a job is O(1)
(its heap entry is emptied) and the heap is rebuilt once emptied entries
outnumber live ones, so cancelled jobs neither stay in the heap until their
time nor keep the timer armed. No I/O: the clock is injected.
"""
from __future__ import annotations

import heapq
from typing import Any, Callable, Dict, List

#: Emptied heap entries tolerated before a rebuild is considered.
_COMPACT_MINIMUM = 64


class EpochScheduler:
    """
    Calls C{due(item)} for each item once its time has come, in time order
    (ties in the order added).

    @param clock: an C{IReactorTime}.
    @param due: called with each item whose time has come.
    """

    def __init__(self, clock: Any, due: Callable[[Any], None]) -> None:
        self._clock = clock
        self._due = due
        # [when, sequence, item]; item None once removed.
        self._heap: List[List[Any]] = []
        self._entries: Dict[Any, List[Any]] = {}
        self._sequence = 0
        self._call: Any = None

    def __len__(self) -> int:
        """How many items wait for their time."""
        return len(self._entries)

    def add(self, item: Any, when: float) -> None:
        """Call C{due(item)} at Unix time C{when}."""
        self._sequence += 1
        entry = [when, self._sequence, item]
        self._entries[item] = entry
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._arm()

    def remove(self, item: Any) -> None:
        """Forget C{item} (nothing happens if it is not scheduled)."""
        entry = self._entries.pop(item, None)
        if entry is None:
            return
        entry[2] = None
        heap = self._heap
        if not self._entries:
            heap.clear()
            self._disarm()
        elif len(heap) > _COMPACT_MINIMUM and len(heap) > 2 * len(self._entries):
            self._heap = [e for e in heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._arm()
        elif heap[0] is entry:
            self._dropDeadHead()
            self._arm()

    def cancel(self) -> None:
        """Stop the timer (the service stops); items stay."""
        self._disarm()

    def _dropDeadHead(self) -> None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)

    def _disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self) -> None:
        self._disarm()
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        due = []
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)
            item = entry[2]
            if item is not None:
                del self._entries[item]
                due.append(item)
        self._arm()
        for item in due:
            self._due(item)


__all__ = ["EpochScheduler"]
