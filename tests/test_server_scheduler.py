"""Tests for the epoch scheduler, txgear.server._scheduler (task.Clock, no I/O)."""
from __future__ import annotations

from twisted.internet.task import Clock

from txgear.server._scheduler import EpochScheduler


def make():
    clock = Clock()
    clock.advance(1000)
    fired = []
    return EpochScheduler(clock, fired.append), clock, fired


def test_itemsFireInTimeOrderThenInsertionOrder():
    scheduler, clock, fired = make()
    for item, when in (("c", 1020), ("a", 1010), ("b", 1010), ("past", 10)):
        scheduler.add(item, when)
    clock.advance(0)
    assert fired == ["past"]
    clock.advance(10)
    assert fired == ["past", "a", "b"]
    clock.advance(10)
    assert fired == ["past", "a", "b", "c"] and len(scheduler) == 0
    assert clock.getDelayedCalls() == []


def test_removingTheEarliestItemMovesTheTimer():
    scheduler, clock, fired = make()
    scheduler.add("soon", 1001)
    scheduler.add("later", 1100)
    scheduler.remove("soon")
    scheduler.remove("unknown")
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == 1100
    scheduler.remove("later")
    assert clock.getDelayedCalls() == [] and len(scheduler) == 0


def test_removedItemsDoNotStayInTheHeap():
    scheduler, clock, fired = make()
    for i in range(1000):
        scheduler.add(i, 2000 + i)
    for i in range(1, 1000):
        scheduler.remove(i)
    assert len(scheduler._heap) <= 128
    clock.advance(1000)
    assert fired == [0] and clock.getDelayedCalls() == []


def test_anItemAddedWhileFiringIsScheduled():
    clock = Clock()
    fired = []

    def due(item):
        fired.append(item)
        if item == "first":
            scheduler.add("second", clock.seconds() + 5)

    scheduler = EpochScheduler(clock, due)
    scheduler.add("first", 1)
    clock.advance(1)
    clock.advance(5)
    assert fired == ["first", "second"] and clock.getDelayedCalls() == []


def test_cancelStopsTheTimerAndKeepsTheItems():
    scheduler, clock, fired = make()
    scheduler.add("x", 1010)
    scheduler.cancel()
    assert clock.getDelayedCalls() == [] and len(scheduler) == 1
