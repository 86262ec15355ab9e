"""
Retry policies in the job server's state (txgear.server._state with
txgear.server._policy): each outcome of an attempt, retried or not, for
background and foreground jobs; backoff on a task.Clock; attempts, last
error and due time kept, in memory and in the store.
"""
from __future__ import annotations

from typing import Any, List

import pytest

from tests.test_server_state import P, FakePeer, connect, grab, submit
from txgear.server._policy import PolicyTable
from txgear.server._state import DONE, QUEUED, SCHEDULED, JobServerState
from txgear.store import MemoryJobStore
from twisted.internet.task import Clock

START = 1_700_000_000.0


class Zero:
    """random.random that always draws 0: the shortest jittered delay."""

    def __call__(self) -> float:
        return 0.0


def makeState(policy: str = "", store: Any = None, clock: Any = None, **policies: str) -> Any:
    clock = clock or Clock()
    if not clock.seconds():
        clock.advance(START)
    table = PolicyTable()
    if policy:
        table.set(b"*", policy)
    for name, spec in policies.items():
        table.set(name.encode(), spec)
    state = JobServerState(clock=clock, handlePrefix=b"H:t", policies=table, random=Zero(),
                           store=store)
    return state, clock


def worker(state: Any, function: bytes = b"f", timeout: float = 0.0) -> Any:
    session, peer = connect(state)
    state.canDo(session, function, timeout)
    return session, peer


def runAndEnd(state: Any, clock: Any, outcome: str, handle: bytes) -> None:
    """A new worker grabs C{handle} and ends its attempt with C{outcome}."""
    session, peer = worker(state, timeout=5.0)
    assert grab(state, session, peer)[1][0] == handle
    if outcome == "lost":
        state.disconnect(session)
    elif outcome == "timeout":
        clock.advance(5.0)
    elif outcome == "fail":
        state.workEnd(session, P.WORK_FAIL, handle, handle)
    else:
        state.workEnd(session, P.WORK_EXCEPTION, handle, handle + b"\0Traceback: boom")


ERRORS = {"lost": b"worker lost", "timeout": b"timeout", "fail": b"WORK_FAIL",
          "exception": b"Traceback: boom"}
OUTCOMES = list(ERRORS)


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_backgroundJobRetriedAfterItsBackoff(outcome: str) -> None:
    """
    Every outcome the policy names retries a background job: it waits out
    its backoff (known, not running, not grabbable), keeping its handle and
    unique, then runs again; attempts and last error are kept.
    """
    state, clock = makeState(f"attempts:3,backoff:2s..8s,on:{outcome}")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, unique=b"u1", background=True)
    runAndEnd(state, clock, outcome, handle)
    job = state.jobs[handle]
    assert (job.state, job.attempts, job.lastError) == (SCHEDULED, 1, ERRORS[outcome])
    assert job.retryAt == int((clock.seconds() + 2.0) * 1000)
    assert state.functions[b"f"].total() == 1 and state.functions[b"f"].scheduled == 1
    state.getStatus(client, handle)
    assert cpeer.take() == [(P.STATUS_RES, [handle, b"1", b"0", b"0", b"0"])]
    early, epeer = worker(state)
    state.grab(early, P.GRAB_JOB_UNIQ)
    assert epeer.take() == [(P.NO_JOB, [])]
    clock.advance(1.999)
    assert job.state == SCHEDULED
    clock.advance(0.001)
    assert job.state == QUEUED and job.retryAt == 0
    assert grab(state, early, epeer) == (P.JOB_ASSIGN_UNIQ, [handle, b"f", b"u1", b"x"])
    assert cpeer.take() == []


def test_secondBackoffDoubles() -> None:
    state, clock = makeState("attempts:5,backoff:1s..1m,on:lost")
    state.random = lambda: 1.0  # the nominal delay itself
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    delays = []
    for attempt in range(4):
        before = clock.seconds()
        runAndEnd(state, clock, "lost", handle)
        job = state.jobs[handle]
        delays.append(round(job.retryAt / 1000 - before, 3))
        clock.advance(job.retryAt / 1000 - clock.seconds())
    assert delays == [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_outcomeNotInThePolicyFailsAtOnce(outcome: str) -> None:
    others = "+".join(o for o in OUTCOMES if o != outcome)
    state, clock = makeState(f"attempts:5,backoff:1s,on:{others}")
    exhausted: List[Any] = []
    original = state._exhausted
    state._exhausted = lambda job, exc=None: (exhausted.append((job.attempts, job.lastError)),
                                              original(job, exc))
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    runAndEnd(state, clock, outcome, handle)
    assert handle not in state.jobs
    assert exhausted == [(1, ERRORS[outcome])]


@pytest.mark.parametrize("outcome", ["lost", "timeout"])
def test_foregroundClientSeesWorkFailOnlyAfterTheLastAttempt(outcome: str) -> None:
    state, clock = makeState("attempts:3,backoff:500ms,on:lost+timeout")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, unique=b"fg")
    for attempt in (1, 2):
        runAndEnd(state, clock, outcome, handle)
        assert cpeer.take() == []
        assert state.jobs[handle].state == SCHEDULED and state.jobs[handle].attempts == attempt
        clock.advance(0.5)
    runAndEnd(state, clock, outcome, handle)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]
    assert state.jobs == {} and state._uniqueIndex == {}


def test_foregroundWorkFailAndExceptionReachTheClientAtOnce() -> None:
    """The issue retries foreground jobs for worker loss and timeout only."""
    state, clock = makeState("attempts:3,backoff:1s,on:lost+timeout+fail+exception")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer)
    runAndEnd(state, clock, "fail", handle)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])] and state.jobs == {}
    client.exceptions = True
    handle = submit(state, client, cpeer)
    runAndEnd(state, clock, "exception", handle)
    assert cpeer.take() == [(P.WORK_EXCEPTION, [handle, b"Traceback: boom"])] and state.jobs == {}


def test_backgroundJobExhaustsItsAttempts() -> None:
    state, clock = makeState("attempts:2,backoff:1s,on:fail")
    ended: List[Any] = []
    original = state._exhausted
    state._exhausted = lambda job, exc=None: (ended.append((job.handle, job.attempts,
                                                            job.lastError)), original(job, exc))
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    runAndEnd(state, clock, "fail", handle)
    clock.advance(1.0)
    runAndEnd(state, clock, "fail", handle)
    assert ended == [(handle, 2, b"WORK_FAIL")] and state.jobs == {}


def test_foregroundClientLeavingDuringTheWaitDropsTheJob() -> None:
    state, clock = makeState("attempts:3,backoff:10s,on:lost")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer)
    runAndEnd(state, clock, "lost", handle)
    state.disconnect(client)
    assert state.jobs == {} and len(state.scheduler) == 0


def test_lastErrorIsCut() -> None:
    state, clock = makeState("attempts:3,on:exception")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    session, peer = worker(state)
    grab(state, session, peer)
    state.workEnd(session, P.WORK_EXCEPTION, handle, handle + b"\0" + b"e" * 5000)
    assert state.jobs[handle].lastError == b"e" * 1024
    assert state.jobs[handle].state == QUEUED  # no backoff: queued at once


def test_defaultKeepsJobRetriesBehaviour() -> None:
    """Without policies, --job-retries 0: a lost worker's job is retried at once, forever."""
    state = JobServerState(clock=Clock(), handlePrefix=b"H:t")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer)
    for n in range(20):
        runAndEnd(state, Clock(), "lost", handle)
        assert state.jobs[handle].state == QUEUED
    runAndEnd(state, Clock(), "fail", handle)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]


def test_cancelDuringTheWait() -> None:
    state, clock = makeState("attempts:3,backoff:10s,on:lost")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    runAndEnd(state, clock, "lost", handle)
    assert state.cancel(handle)
    assert state.jobs == {} and len(state.scheduler) == 0


def test_retryWaitIsDurable() -> None:
    """
    A stored background job's retry is written to the store (attempts, last
    error, due time); a server started on the same store before the due
    time keeps the job waiting until then, under its handle.
    """
    stored: dict = {}
    state, clock = makeState("attempts:4,backoff:30s,on:exception", store=MemoryJobStore(stored))
    client, cpeer = connect(state)
    state.submit(client, b"f", b"u7", b"payload", background=True)
    clock.advance(0)  # the store batch
    (kind, (handle,)), = cpeer.take()
    runAndEnd(state, clock, "exception", handle)
    record, = stored.values()
    due = int((clock.seconds() + 30) * 1000)
    assert (record.attempts, record.lastError, record.retryAt, record.unique) == (
        1, b"Traceback: boom", due, b"u7")
    # "Restart" 10 seconds later: a new state on the same store.
    later = Clock()
    later.advance(clock.seconds() + 10)
    again, _ = makeState("attempts:4,backoff:30s,on:exception", clock=later)
    again.loadStored(list(stored.values()))
    job = again.jobs[handle]
    assert (job.state, job.attempts, job.lastError, job.unique) == (
        SCHEDULED, 1, b"Traceback: boom", b"u7")
    later.advance(19.999)
    assert job.state == SCHEDULED
    later.advance(0.001)
    assert job.state == QUEUED
    session, peer = worker(again)
    assert grab(again, session, peer)[1][0] == handle


def test_exhaustedStoredJobLeavesTheStore() -> None:
    stored: dict = {}
    state, clock = makeState("attempts:2,on:fail", store=MemoryJobStore(stored))
    client, cpeer = connect(state)
    state.submit(client, b"f", b"", b"x", background=True)
    clock.advance(0)
    (kind, (handle,)), = cpeer.take()
    runAndEnd(state, clock, "fail", handle)
    assert stored[1].attempts == 1
    runAndEnd(state, clock, "fail", handle)
    assert stored == {} and state.jobs == {}


def test_functionPolicyOverridesTheDefault() -> None:
    state, clock = makeState("attempts:1", g="attempts:3,backoff:1s,on:lost")
    client, cpeer = connect(state)
    fHandle = submit(state, client, cpeer, function=b"f", background=True)
    runAndEnd(state, clock, "lost", fHandle)
    assert fHandle not in state.jobs
    gHandle = submit(state, client, cpeer, function=b"g", background=True)
    session, peer = worker(state, b"g")
    grab(state, session, peer)
    state.disconnect(session)
    assert state.jobs[gHandle].state == SCHEDULED


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_metricsCountRetriedAttemptsAndTheFinalOutcome(outcome: str) -> None:
    """
    Each retried attempt counts as C{retried}; the last one, when attempts
    run out, counts under its own outcome; a later success as C{complete}.
    """
    from txgear.server import _stats

    state, clock = makeState(f"attempts:3,backoff:0,on:{outcome}")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, background=True)
    # Kept: a function left without jobs and workers is forgotten, its counters stay.
    finished = state.functions[b"f"].stats.finished
    for _ in range(3):
        runAndEnd(state, clock, outcome, handle)
    counted = {_stats.OUTCOMES[i]: n for i, n in enumerate(finished) if n}
    assert counted == {"retried": 2, outcome: 1, "dead": 1}  # background: it entered the dead set
    assert handle not in state.jobs

    handle = submit(state, client, cpeer, background=True)
    runAndEnd(state, clock, outcome, handle)
    session, peer = worker(state)
    assert grab(state, session, peer)[1][0] == handle
    state.workEnd(session, P.WORK_COMPLETE, handle, handle + b"\0done")
    counted = {_stats.OUTCOMES[i]: n for i, n in enumerate(finished) if n}
    assert counted == {"retried": 3, outcome: 1, "dead": 1, "complete": 1}


def test_failedAttemptsAreKeptInTheRecentFailuresRing() -> None:
    """
    Every attempt that ends without completing is kept in the server's
    recent failures: retried ones as not final, the last one as final, with
    the function, handle, outcome, time and error text.
    """
    state, clock = makeState("attempts:2,backoff:1s,on:exception")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, unique=b"u1", background=True)
    runAndEnd(state, clock, "exception", handle)
    clock.advance(2.0)
    runAndEnd(state, clock, "exception", handle)
    failures = list(state.stats.failures)
    assert [(f.function, f.handle, f.outcome, f.final, f.error) for f in failures] == [
        (b"f", handle, "exception", False, b"Traceback: boom"),
        (b"f", handle, "exception", True, b"Traceback: boom")]
    assert failures[0].when == START and failures[1].when == START + 2.0
    assert handle not in state.jobs
