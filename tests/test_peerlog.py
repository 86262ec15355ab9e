"""Tests for txgear._peerlog: peer-caused log lines, cut and rate-limited."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent

from txgear._peerlog import PeerLog, cut


class Peer:
    pass


def test_cutLongValues():
    assert cut(b"short") == "b'short'"
    assert cut(b"x" * 64) == repr(b"x" * 64)
    assert cut(b"\n" * 1000) == repr(b"\n" * 64) + "... (1000 bytes)"
    assert cut(memoryview(b"y" * 100)) == repr(b"y" * 64) + "... (100 bytes)"
    assert cut(42) == 42 and cut("text") == "text"


def test_firstLinesThenOneSummaryPerInterval():
    clock, log = Clock(), Logger(namespace="test")
    peerLog = PeerLog(log, clock, burst=3, interval=10)
    peer, other = Peer(), Peer()
    with capturedLogs() as events:
        for _ in range(1000):
            peerLog.warn(peer, "bad", "Bad packet from {peer}", peer="p1")
        peerLog.warn(peer, "other", "Other from {peer}", peer="p1")
        peerLog.warn(other, "bad", "Bad packet from {peer}", peer="p2")
    assert [formatEvent(e) for e in events] == ["Bad packet from p1"] * 3 + [
        "Other from p1", "Bad packet from p2"]
    assert peerLog.suppressed(peer) == ["bad"]
    clock.advance(10)
    with capturedLogs() as events:
        peerLog.warn(peer, "bad", "Bad packet from {peer}", peer="p1")
    assert [formatEvent(e) for e in events] == [
        "997 more bad messages about p1 suppressed in 10 s", "Bad packet from p1"]
    assert peerLog.suppressed(peer) == []


def test_valuesAreCut():
    peerLog = PeerLog(Logger(namespace="test"), Clock())
    with capturedLogs() as events:
        peerLog.info(Peer(), "unknown", "Result for {handle}", handle=b"H" * 10000)
    (event,) = events
    assert len(formatEvent(event)) < 120 and "(10000 bytes)" in formatEvent(event)


def test_memoryGoesWithThePeer():
    import gc

    peerLog = PeerLog(Logger(namespace="test"), Clock())
    peer = Peer()
    peerLog.warn(peer, "bad", "x")
    assert len(peerLog._windows) == 1
    del peer
    gc.collect()
    assert len(peerLog._windows) == 0
