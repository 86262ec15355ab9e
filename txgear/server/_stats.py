# -*- test-case-name: tests.test_server_stats -*-
"""
The job server's own counters: what C{/metrics} reports besides the gauges
it reads from the state.

Pure: no I/O, no twisted.web, no prometheus_client, no clock of its own
(callers pass durations). Every event costs O(1): an integer incremented in
a list, or a histogram observation (a bisection over a fixed, short tuple of
bucket bounds, then one increment).

Per function (L{FunctionStats}, made on a function's first job): jobs
submitted (foreground, background), jobs finished by outcome, and
histograms of queue wait and run time. Server-wide (L{ServerStats}):
connections by role, bytes in, packets received by type, errors sent by
code, store commit latency, and the most recent failed attempts
(L{Failure}, a bounded ring: L{ServerStats.failures}).

A function the state forgets (no worker, no job) hands its counters back
with L{ServerStats.retire}: they are kept, so a function that comes and goes
keeps counting from where it was, but only for the L{ServerStats.maxRetired}
most recently forgotten functions; older ones are dropped (their series
disappear from C{/metrics}, which Prometheus tolerates). Memory is so bounded
by C{--max-functions} plus C{maxRetired}.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

from txgear._packet import MAX_TYPE, PacketType

#: Outcomes of a finished job, in the order of L{FunctionStats.finished}.
OUTCOMES = ("complete", "fail", "exception", "timeout", "cancelled", "lost", "retried", "dead")
COMPLETE, FAIL, EXCEPTION, TIMEOUT, CANCELLED, LOST, RETRIED, DEAD = range(len(OUTCOMES))

#: Connection roles, in the order of L{ServerStats.connections}.
ROLES = ("client", "worker", "admin")
CLIENT, WORKER, ADMIN = range(len(ROLES))

#: Bucket bounds (seconds) of the queue wait and run time histograms.
JOB_BUCKETS: Tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
                                  60.0, 300.0, 900.0, 3600.0)
#: Bucket bounds (seconds) of the store commit latency histogram.
STORE_BUCKETS: Tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                    0.5, 1.0, 2.5, 5.0, 10.0)

#: Default number of forgotten functions whose counters are kept.
DEFAULT_MAX_RETIRED = 1000

#: Default number of recent failed attempts kept (L{ServerStats.failures}).
DEFAULT_MAX_FAILURES = 100
#: Longest error text kept with a failed attempt, in bytes.
MAX_FAILURE_ERROR = 256


class Failure(NamedTuple):
    """
    One attempt of a job that ended without completing.

    @ivar when: the wall-clock time it ended (seconds since the epoch).
    @ivar function: the job's function name.
    @ivar handle: the job's handle.
    @ivar outcome: how the attempt ended: C{fail}, C{exception}, C{timeout}
        or C{lost}.
    @ivar final: C{True} if the job failed for good, C{False} if it is
        retried.
    @ivar error: the start of its error text (the exception's data, or
        C{WORK_FAIL}, C{timeout}, C{worker lost}), at most
        L{MAX_FAILURE_ERROR} bytes, as the peer sent it.
    """

    when: float
    function: bytes
    handle: bytes
    outcome: str
    final: bool
    error: bytes


class Histogram:
    """
    Observations counted in fixed buckets.

    @ivar bounds: the buckets' upper bounds, ascending (an observation equal
        to a bound falls in that bucket, as Prometheus' C{le}).
    @ivar counts: observations per bucket (not cumulative); the last entry
        counts those above the largest bound.
    @ivar sum: the sum of all observations.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (O(1): the bounds are few and fixed)."""
        if value < 0.0:
            value = 0.0  # the wall clock stepped back
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def cumulative(self) -> List[Tuple[float, int]]:
        """C{(upper bound, observations at or below it)}, ending with infinity."""
        out = []
        total = 0
        for bound, count in zip(self.bounds + (float("inf"),), self.counts):
            total += count
            out.append((bound, total))
        return out


class FunctionStats:
    """
    The counters of one function name.

    @ivar submitted: jobs created, C{[foreground, background]} (a submission
        coalesced onto an existing job creates none).
    @ivar finished: jobs ended, by outcome (indexes: L{OUTCOMES}).
    @ivar wait: seconds a job waited in the queue before a worker took it,
        from its last queueing (a requeued job waits anew).
    @ivar run: seconds from a worker taking a job to its end or its loss.
    """

    __slots__ = ("name", "submitted", "finished", "wait", "run")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.submitted = [0, 0]
        self.finished = [0] * len(OUTCOMES)
        self.wait = Histogram(JOB_BUCKETS)
        self.run = Histogram(JOB_BUCKETS)


class ServerStats:
    """
    The server-wide counters, and the per-function ones of functions the
    state no longer knows.

    @ivar connections: open connections by role (indexes: L{ROLES}).
    @ivar bytesIn: bytes received from peers.
    @ivar packetsIn: messages received by packet type (index: the type;
        index 0 counts admin text lines).
    @ivar errors: ERROR packets sent, by code.
    @ivar storeCommit: seconds from handing a batch of background jobs to
        the store to the store's answer.
    @ivar retired: counters of forgotten functions, least recently
        forgotten first.
    @ivar maxRetired: how many forgotten functions' counters are kept.
    @ivar failures: the most recent failed attempts, oldest first (a ring of
        at most C{maxFailures}).
    """

    def __init__(self, maxRetired: int = DEFAULT_MAX_RETIRED,
                 maxFailures: int = DEFAULT_MAX_FAILURES) -> None:
        self.connections = [0] * len(ROLES)
        self.bytesIn = 0
        self.packetsIn = [0] * (MAX_TYPE + 1)
        self.errors: Dict[bytes, int] = {}
        self.storeCommit = Histogram(STORE_BUCKETS)
        self.retired: "OrderedDict[bytes, FunctionStats]" = OrderedDict()
        self.maxRetired = maxRetired
        self.failures: Deque[Failure] = deque(maxlen=maxFailures)

    def attemptFailed(self, when: float, function: bytes, handle: bytes, outcome: str,
                      final: bool, error: bytes) -> None:
        """Keep a failed attempt in L{failures} (O(1); the oldest drops out)."""
        self.failures.append(Failure(when, function, handle, outcome, final,
                                     bytes(error[:MAX_FAILURE_ERROR])))

    def forFunction(self, name: bytes) -> FunctionStats:
        """
        The counters of a function the state (re)creates: those it had when
        last forgotten, if still kept, else new ones.
        """
        stats = self.retired.pop(name, None)
        if stats is None:
            stats = FunctionStats(name)
        return stats

    def retire(self, stats: FunctionStats) -> None:
        """The state forgot this function: keep its counters, within L{maxRetired}."""
        retired = self.retired
        retired[stats.name] = stats
        retired.move_to_end(stats.name)
        while len(retired) > self.maxRetired:
            retired.popitem(last=False)

    def errorSent(self, packet: bytes) -> None:
        """Count an ERROR packet (whole, header included) by its code."""
        end = packet.find(b"\0", 12)
        code = bytes(packet[12:end if end >= 0 else len(packet)])
        self.errors[code] = self.errors.get(code, 0) + 1

    def roleChanged(self, old: int, new: int) -> None:
        """A connection's role changed (see docs/operations.md for the rule)."""
        connections = self.connections
        connections[old] -= 1
        connections[new] += 1


def packetTypeName(kind: int) -> Optional[str]:
    """The label of C{packetsIn[kind]}: the packet type's name, C{admin_text} for 0."""
    if kind == 0:
        return "admin_text"
    try:
        return PacketType(kind).name
    except ValueError:
        return None


__all__ = ["ADMIN", "CANCELLED", "CLIENT", "COMPLETE", "DEAD", "DEFAULT_MAX_FAILURES",
           "EXCEPTION", "FAIL", "Failure", "FunctionStats", "MAX_FAILURE_ERROR", "Histogram", "JOB_BUCKETS", "LOST", "OUTCOMES", "RETRIED", "ROLES",
           "STORE_BUCKETS", "ServerStats", "TIMEOUT", "WORKER", "packetTypeName"]
