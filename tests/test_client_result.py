"""
L{txgear.jobs.BackgroundJob.result} and the client's C{backgroundJob} /
C{backgroundJobByUnique}, against the in-memory server (its real state and
protocol, a L{twisted.internet.task.Clock}): the polling, the framed
C{show result} reply, each way a wait ends, cancel and timeout.
"""
from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.python.failure import Failure

from txgear.errors import JobException, JobFailed, ResultNotKept, ResultUnknown
from txgear.jobs import BackgroundJob
from txgear.server._policy import PolicyTable
from txgear.testing import MemoryGearmanServer

BINARY = b"\x00OK complete 3\n\r\nERR RUNNING\n\xff" * 50


def keepingServer(spec: str = "keep:1h", **options: Any) -> MemoryGearmanServer:
    table = PolicyTable()
    table.set(b"f", spec)
    return MemoryGearmanServer(policies=table, **options)


def fired(d: Deferred, server: Any = None) -> Any:
    """What C{d} fired with (after delivering every byte to and from C{server})."""
    if server is not None:
        server.flush()
    box: list = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def held(server: MemoryGearmanServer, function: Any) -> list:
    """A worker whose jobs wait for the test: returns the list of their Deferreds."""
    jobs: list = []

    def work(job: Any) -> Deferred:
        d: Deferred = Deferred()
        jobs.append(d)
        return d
    server.worker({"f": work})
    return jobs


def test_resultOfACompletedJobAfterPolling() -> None:
    server = keepingServer()
    jobs = held(server, "f")
    client = server.client()
    job = fired(client.submitBackground("f", b"x", unique="u1"), server)
    assert job.function == b"f"
    result = job.result()
    server.advance(1)
    server.advance(5)
    assert not result.called  # still running: polled with GET_STATUS
    jobs[0].callback(BINARY)
    server.advance(5)
    assert fired(result) == BINARY
    server.close()


@pytest.mark.parametrize("outcome", ["fail", "exception"])
def test_failAndExceptionAreReported(outcome: str) -> None:
    server = keepingServer("keep:1h,attempts:1")
    jobs = held(server, "f")
    client = server.client(exceptions=True)
    job = fired(client.submitBackground("f", b"x"), server)
    result = job.result()
    if outcome == "fail":
        jobs[0].errback(JobFailed("no"))
    else:
        jobs[0].errback(RuntimeError("boom\0data"))
    server.advance(1)
    failure = fired(result)
    assert isinstance(failure, Failure)
    if outcome == "fail":
        assert failure.check(JobFailed)
    else:
        assert failure.check(JobException)
        assert b"boom\0data" in failure.value.data
    server.close()


def test_byHandleAndByUniqueFromAnotherClient() -> None:
    server = keepingServer()
    server.worker({"f": lambda job: job.payload[::-1]})
    submitter = server.client()
    job = fired(submitter.submitBackground("f", b"abc", unique="order-1"), server)
    server.flush()
    other = server.client()
    byHandle = other.backgroundJob(job.handle)
    assert byHandle == job
    assert fired(byHandle.result(), server) == b"cba"
    byUnique = other.backgroundJobByUnique("f", "order-1")
    assert byUnique.handle == b"" and byUnique.server == "memory"
    d = byUnique.result()
    server.flush()
    assert fired(d) == b"cba"
    server.close()


def test_unknownNotKeptAndNoKeepPolicy() -> None:
    server = keepingServer(keepMaxSize=10)
    server.worker({"f": lambda job: b"y" * 11, "plain": lambda job: b"z"})
    client = server.client()
    big = fired(client.submitBackground("f", b"x"), server)
    plain = fired(client.submitBackground("plain", b"x"), server)
    server.flush()
    notKept = fired(big.result(), server)
    assert notKept.check(ResultNotKept)
    assert (notKept.value.status, notKept.value.size) == ("complete", 11)
    assert fired(plain.result(), server).check(ResultUnknown)
    assert fired(client.backgroundJob(b"H:memory:999").result(), server).check(ResultUnknown)
    d = client.backgroundJobByUnique("f", "never").result()
    server.flush()
    assert fired(d).check(ResultUnknown)
    server.close()


def test_cancelAndTimeoutStopPolling() -> None:
    server = keepingServer()
    held(server, "f")
    client = server.client()
    job = fired(client.submitBackground("f", b"x"), server)
    cancelled = job.result()
    timed = job.result(timeout=3)
    server.advance(1)
    cancelled.cancel()
    assert fired(cancelled).check(CancelledError)
    server.advance(3)
    assert fired(timed).check(TimeoutError)
    server.advance(60)
    # Nothing of either wait is left on the clock but the client's and server's own.
    assert not any("_poll" in repr(c.func) for c in server.clock.getDelayedCalls())
    server.close()


def test_unboundJobAndServerChoice() -> None:
    assert fired(BackgroundJob(b"H:x:1", None).result()).check(ValueError)
    server = keepingServer()
    client = server.client()
    with pytest.raises(ValueError):
        client.backgroundJob(b"H:x:1", server="elsewhere")
    with pytest.raises(ValueError):
        client.backgroundJobByUnique("f", "")
    server.close()
