"""Tests for the job server's counters, txgear.server._stats (pure)."""
from __future__ import annotations

from txgear._packet import PacketType, encodeResponse
from txgear.server._stats import (
    JOB_BUCKETS,
    MAX_FAILURE_ERROR,
    FunctionStats,
    Histogram,
    ServerStats,
    packetTypeName,
)


def test_histogramBucketsAreInclusiveUpperBounds():
    histogram = Histogram((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 1.0, 1.5, 100.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 2]
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 6)]
    assert histogram.count == 6
    assert histogram.sum == 103.1


def test_histogramClampsNegativeDurations():
    histogram = Histogram((0.1,))
    histogram.observe(-2.0)  # a wall clock that stepped back
    assert histogram.counts == [1, 0]
    assert histogram.sum == 0.0


def test_functionStatsStartAtZero():
    stats = FunctionStats(b"f")
    assert stats.submitted == [0, 0]
    assert stats.finished == [0] * 8
    assert stats.wait.cumulative()[-1] == (float("inf"), 0)
    assert stats.run.bounds == JOB_BUCKETS


def test_retiredCountersComeBackAndAreBounded():
    stats = ServerStats(maxRetired=2)
    first = stats.forFunction(b"a")
    first.submitted[0] = 5
    stats.retire(first)
    again = stats.forFunction(b"a")
    assert again is first and again.submitted == [5, 0]
    assert not stats.retired
    for name in (b"a", b"b", b"c"):
        stats.retire(again if name == b"a" else stats.forFunction(name))
    # The least recently forgotten one is dropped.
    assert list(stats.retired) == [b"b", b"c"]
    assert stats.forFunction(b"a").submitted == [0, 0]


def test_errorSentCountsByCode():
    stats = ServerStats()
    stats.errorSent(encodeResponse(PacketType.ERROR, b"QUEUE_ERROR", b"full"))
    stats.errorSent(encodeResponse(PacketType.ERROR, b"QUEUE_ERROR", b"other"))
    stats.errorSent(encodeResponse(PacketType.ERROR, b"JOB_NOT_FOUND", b""))
    assert stats.errors == {b"QUEUE_ERROR": 2, b"JOB_NOT_FOUND": 1}


def test_packetTypeNames():
    assert packetTypeName(0) == "admin_text"
    assert packetTypeName(int(PacketType.SUBMIT_JOB)) == "SUBMIT_JOB"
    assert packetTypeName(5) == "UNUSED"


def test_failuresAreABoundedRingWithCutErrors():
    stats = ServerStats(maxFailures=3)
    for i in range(5):
        stats.attemptFailed(float(i), b"f", b"H:%d" % i, "fail", True, b"x" * 1000)
    assert [f.handle for f in stats.failures] == [b"H:2", b"H:3", b"H:4"]
    assert all(len(f.error) == MAX_FAILURE_ERROR for f in stats.failures)
