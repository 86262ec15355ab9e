"""
Kept results in the job server's state (txgear.server._kept with
txgear.server._state and the admin command C{show result}): kept on
complete, fail and exception for background jobs of a keep:TTL policy, never
for foreground ones; the size limit; expiry by a sweep whose work is the
number expired; the index bound; idempotent submission; reload at start;
C{show result} byte for byte with binary results, and its ACL. Deterministic:
a task.Clock and the memory store.
"""
from __future__ import annotations

from typing import Any, Dict

import pytest
from twisted.internet.defer import Deferred

from tests.test_server_deadset import admin, submitBackground
from tests.test_server_retry import START, makeState, runAndEnd, worker
from tests.test_server_state import P, connect, grab, submit
from txgear.jobs import DeadJob, KeptResult, StoredJob
from txgear.server._admin import AdminCommands
from txgear.server._kept import SWEEP_INTERVAL
from txgear.store import MemoryJobStore

NOW = int(START * 1000)


def keptState(policy: str = "keep:1h", withStore: bool = True, **kwargs: Any) -> Any:
    if withStore:
        jobs: Dict[int, StoredJob] = {}
        dead: Dict[int, DeadJob] = {}
        kept: Dict[int, KeptResult] = {}
        store = MemoryJobStore(jobs, dead, kept)
        state, clock = makeState(policy, store=store, **kwargs)
    else:
        state, clock = makeState(policy, **kwargs)
        store = state.kept.store
    return state, clock, store


def complete(state: Any, handle: bytes, result: bytes, function: bytes = b"f") -> None:
    session, peer = worker(state, function)
    assert grab(state, session, peer)[1][0] == handle
    state.workEnd(session, P.WORK_COMPLETE, handle, handle + b"\0" + result)


def showResult(state: Any, line: bytes) -> bytes:
    session, _ = connect(state)
    reply, action = AdminCommands(state, lambda s: (b"1", b"127.0.0.1")).run(session, line)
    if isinstance(reply, Deferred):
        answered: list = []
        reply.addCallback(answered.append)
        reply = answered[0]
    assert isinstance(reply, bytes)
    return reply


BINARY = b"\x00line one\nOK 3 4\n\r\n\x00\xff" * 3


@pytest.mark.parametrize("withStore", [True, False])
def test_completedBackgroundResultIsKept(withStore: bool) -> None:
    """
    WORK_COMPLETE of a background job keeps its result (binary bytes
    intact) with status, size, finish time and expiry; the store's write
    takes the job off the queue; C{show result} frames it byte for byte.
    """
    state, clock, store = keptState(withStore=withStore)
    handle = submitBackground(state, clock, unique=b"u1")
    complete(state, handle, BINARY)
    clock.advance(0)
    assert state.jobs == {}
    assert store.jobs == {}
    assert store.kept[1] == KeptResult(1, b"f", b"u1", "complete", BINARY, NOW,
                                       NOW + 3600 * 1000)
    assert showResult(state, b"show result " + handle) == (
        b"OK complete %d\n" % len(BINARY) + BINARY + b"\n")
    assert showResult(state, b"show result unique f u1") == (
        b"OK complete %d\n" % len(BINARY) + BINARY + b"\n")


@pytest.mark.parametrize("outcome, status, data", [
    ("fail", "fail", b""), ("exception", "exception", b"Traceback: boom"),
    ("lost", "fail", b"")])
def test_failureForGoodIsKeptAndDead(outcome: str, status: str, data: bytes) -> None:
    """A background job failing for good is kept with its status and data, and is dead too."""
    state, clock, store = keptState("keep:1h,attempts:1,on:fail+exception+lost")
    handle = submitBackground(state, clock)
    runAndEnd(state, clock, outcome, handle)
    clock.advance(0)
    assert store.jobs == {} and list(store.dead) == [1]
    assert (store.kept[1].status, store.kept[1].result) == (status, data)
    assert showResult(state, b"show result " + handle) == (
        b"OK %s %d\n" % (status.encode(), len(data)) + data + b"\n")


def test_retriedAttemptIsNotKept() -> None:
    state, clock, store = keptState("keep:1h,attempts:2,on:fail")
    handle = submitBackground(state, clock)
    runAndEnd(state, clock, "fail", handle)
    assert store.kept == {}
    assert showResult(state, b"show result " + handle) == b"ERR QUEUED\r\n"


def test_foregroundAndUnkeptFunctionsAreNotKept() -> None:
    state, clock, store = keptState("keep:0", g="keep:1m")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer, b"g")
    complete(state, handle, b"r", b"g")
    other = submitBackground(state, clock, function=b"f")
    complete(state, other, b"r")
    assert store.kept == {}
    assert showResult(state, b"show result " + handle) == b"ERR UNKNOWN_JOB\r\n"
    assert showResult(state, b"show result " + other) == b"ERR UNKNOWN_JOB\r\n"


def test_runningQueuedUnknownAndBadArguments() -> None:
    state, clock, store = keptState()
    handle = submitBackground(state, clock)
    assert showResult(state, b"show result " + handle) == b"ERR QUEUED\r\n"
    session, peer = worker(state)
    grab(state, session, peer)
    assert showResult(state, b"show result " + handle) == b"ERR RUNNING\r\n"
    assert showResult(state, b"show result H:t:99") == b"ERR UNKNOWN_JOB\r\n"
    assert showResult(state, b"show result nonsense") == b"ERR UNKNOWN_JOB\r\n"
    assert showResult(state, b"show result unique f nothing") == b"ERR UNKNOWN_JOB\r\n"
    assert showResult(state, b"show result") == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


def test_resultAboveTheSizeLimitIsRecordedNotKept() -> None:
    state, clock, store = keptState()
    state.kept.maxSize = 10
    handle = submitBackground(state, clock)
    complete(state, handle, b"x" * 11)
    assert store.kept[1] == KeptResult(1, b"f", b"", "complete", b"", NOW, NOW + 3600000,
                                       kept=False, size=11)
    assert showResult(state, b"show result " + handle) == b"ERR NOT_KEPT complete+11\r\n"
    second = submitBackground(state, clock)
    complete(state, second, b"x" * 10)
    assert store.kept[2].result == b"x" * 10


def test_expirySweepCostsTheExpiredOnly() -> None:
    """
    Results expire at their TTL: the sweep (every SWEEP_INTERVAL) drops the
    expired ones from the index and the store; its work is the number
    expired, whatever the number kept.
    """
    state, clock, store = keptState("keep:1h", short="keep:2s")
    for n in range(1000):
        complete(state, submitBackground(state, clock, function=b"f"), b"long %d" % n)
    short = [submitBackground(state, clock, function=b"short") for _ in range(5)]
    for handle in short:
        complete(state, handle, b"r", b"short")
    assert len(state.kept) == 1005
    work = state.kept.sweepWork
    clock.advance(SWEEP_INTERVAL)
    assert state.kept.sweepWork == work  # nothing expired: nothing looked at
    clock.advance(2.0)
    assert state.kept.sweepWork - work == 5
    assert len(state.kept) == 1000 and len(store.kept) == 1000
    assert state.kept.expired == 5
    assert showResult(state, b"show result " + short[0]) == b"ERR UNKNOWN_JOB\r\n"


def test_expiredButNotSweptLooksUnknown() -> None:
    state, clock, store = keptState("keep:1500ms")
    handle = submitBackground(state, clock)
    complete(state, handle, b"r")
    clock.advance(1.0)  # the sweep runs, before the expiry
    clock.advance(0.5)
    assert len(state.kept) == 1
    assert showResult(state, b"show result " + handle) == b"ERR UNKNOWN_JOB\r\n"


def test_indexBoundDropsTheOldest() -> None:
    state, clock, store = keptState()
    state.kept.maxResults = 3
    handles = [submitBackground(state, clock) for _ in range(5)]
    for handle in handles:
        complete(state, handle, b"r")
    assert len(state.kept) == 3 and state.kept.dropped == 2
    assert sorted(store.kept) == [3, 4, 5]
    assert showResult(state, b"show result " + handles[0]) == b"ERR UNKNOWN_JOB\r\n"
    assert showResult(state, b"show result " + handles[4]).startswith(b"OK complete 1\n")


def test_idempotentSubmissionReturnsTheKeptHandle() -> None:
    """
    With idempotent:yes, a background submission whose unique names a kept
    result gets that job's handle and does not run; once expired it runs
    again under a new handle. Without it, the job runs again.
    """
    state, clock, store = keptState("keep:1m,idempotent:yes", plain="idempotent:no")
    handle = submitBackground(state, clock, unique=b"order-7")
    complete(state, handle, b"done")
    assert submitBackground(state, clock, unique=b"order-7") == handle
    assert state.idempotentHits == 1
    session, peer = worker(state)
    state.grab(session, P.GRAB_JOB_UNIQ)
    assert peer.take() == [(P.NO_JOB, [])]
    # Another function, or no idempotent: runs again.
    plain = submitBackground(state, clock, function=b"plain", unique=b"p")
    complete(state, plain, b"1", b"plain")
    assert submitBackground(state, clock, function=b"plain", unique=b"p") != plain
    clock.advance(61)
    again = submitBackground(state, clock, unique=b"order-7")
    assert again != handle
    assert showResult(state, b"show result " + again) == b"ERR QUEUED\r\n"


def test_keptResultsReloadedAtStart() -> None:
    jobs: Dict[int, StoredJob] = {}
    kept = {7: KeptResult(7, b"f", b"u", "complete", b"r", NOW - 10, NOW + 5000),
            8: KeptResult(8, b"f", b"v", "fail", b"", NOW - 20, NOW - 1)}
    store = MemoryJobStore(jobs, {}, kept)
    state, clock = makeState("keep:1h,idempotent:yes", store=store)
    assert state.loadKept(list(kept.values())) == 1
    assert list(kept) == [7]  # the expired one deleted
    assert showResult(state, b"show result H:t:7") == b"OK complete 1\nr\n"
    assert submitBackground(state, clock, unique=b"u") == b"H:t:7"
    assert submitBackground(state, clock, unique=b"new") == b"H:t:9"
