"""Tests for the job server's state machine, txgear.server._state (no I/O)."""
from __future__ import annotations

import platform
import sys
from typing import List, Tuple

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from txgear._packet import PacketDecoder, PacketType, encodeResponse, splitArguments
from txgear.errors import StoreError
from txgear.server._state import HIGH, LOW, NORMAL, JobServerState

P = PacketType


class FakePeer:
    """Collects what the state writes to one connection, decoded."""

    def __init__(self) -> None:
        self.decoder = PacketDecoder(expectRequests=False)
        self.packets: List[Tuple[int, List[bytes]]] = []
        self.paused = False

    def write(self, data: bytes) -> None:
        for kind, body in self.decoder.feed(data):
            self.packets.append((kind, splitArguments(kind, body)))

    def writeSequence(self, data: List[bytes]) -> None:
        self.write(b"".join(data))

    def pauseReading(self) -> None:
        self.paused = True

    def resumeReading(self) -> None:
        self.paused = False

    def take(self) -> List[Tuple[int, List[bytes]]]:
        packets, self.packets = self.packets, []
        return packets


def makeState(**kwargs):
    clock = Clock()
    state = JobServerState(clock=clock, handlePrefix=b"H:t", **kwargs)
    return state, clock


def connect(state):
    peer = FakePeer()
    return state.connect(peer), peer


def submit(state, session, peer, function=b"f", unique=b"", payload=b"x", **kw):
    state.submit(session, function, unique, payload, **kw)
    (kind, args), = peer.take()
    assert kind == P.JOB_CREATED, (kind, args)
    return args[0]


def grab(state, session, peer, kind=P.GRAB_JOB_UNIQ):
    state.grab(session, kind)
    (packet,) = peer.take()
    return packet


def test_foregroundRoundTrip():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"rev")
    handle = submit(state, client, cpeer, b"rev", b"", b"abc")
    assert handle == b"H:t:1"
    assert grab(state, worker, wpeer) == (P.JOB_ASSIGN_UNIQ, [handle, b"rev", b"", b"abc"])
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0cba")
    assert cpeer.take() == [(P.WORK_COMPLETE, [handle, b"cba"])]
    assert state.jobs == {} and state.functions[b"rev"].total() == 0


def test_grabVariants():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    h1 = submit(state, client, cpeer, unique=b"u1", payload=b"p1")
    h2 = submit(state, client, cpeer, unique=b"u2", payload=b"p2")
    state.submit(client, b"f", b"u3", b"p3", reducer=b"red")
    h3 = cpeer.take()[0][1][0]
    assert grab(state, worker, wpeer, P.GRAB_JOB) == (P.JOB_ASSIGN, [h1, b"f", b"p1"])
    assert grab(state, worker, wpeer, P.GRAB_JOB_ALL) == (P.JOB_ASSIGN_UNIQ, [h2, b"f", b"u2", b"p2"])
    assert grab(state, worker, wpeer, P.GRAB_JOB_ALL) == (
        P.JOB_ASSIGN_ALL, [h3, b"f", b"u3", b"red", b"p3"])
    assert grab(state, worker, wpeer) == (P.NO_JOB, [])


def test_priorityOrderWithinAFunction():
    state, _ = makeState()
    client, cpeer = connect(state)
    order = [(LOW, b"l1"), (NORMAL, b"n1"), (HIGH, b"h1"), (LOW, b"l2"), (HIGH, b"h2"), (NORMAL, b"n2")]
    for priority, payload in order:
        submit(state, client, cpeer, payload=payload, priority=priority, background=True)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    got = [grab(state, worker, wpeer)[1][3] for _ in order]
    assert got == [b"h1", b"h2", b"n1", b"n2", b"l1", b"l2"]


def test_priorityIsGlobalAcrossFunctions():
    # gearmand 1.1.20 serves the last-registered function first (issue #173);
    # txgear serves by priority first, then submission order.
    state, _ = makeState()
    client, cpeer = connect(state)
    submit(state, client, cpeer, b"fa", payload=b"a-high-1", priority=HIGH, background=True)
    submit(state, client, cpeer, b"fb", payload=b"b-low", priority=LOW, background=True)
    submit(state, client, cpeer, b"fa", payload=b"a-high-2", priority=HIGH, background=True)
    submit(state, client, cpeer, b"fb", payload=b"b-normal", priority=NORMAL, background=True)
    worker, wpeer = connect(state)
    state.canDo(worker, b"fa")
    state.canDo(worker, b"fb")
    got = [grab(state, worker, wpeer)[1][3] for _ in range(4)]
    assert got == [b"a-high-1", b"a-high-2", b"b-normal", b"b-low"]


def test_roundRobinAlternatesFunctions():
    state, _ = makeState(roundRobin=True)
    client, cpeer = connect(state)
    for i in range(2):
        submit(state, client, cpeer, b"fa", payload=b"a%d" % i, background=True)
        submit(state, client, cpeer, b"fb", payload=b"b%d" % i, background=True)
    worker, wpeer = connect(state)
    state.canDo(worker, b"fa")
    state.canDo(worker, b"fb")
    got = [grab(state, worker, wpeer)[1][3] for _ in range(4)]
    assert got == [b"a0", b"b0", b"a1", b"b1"]


def test_uniqueCoalescesAndEveryClientGetsEveryPacket():
    state, _ = makeState()
    c1, p1 = connect(state)
    c2, p2 = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    h1 = submit(state, c1, p1, unique=b"same")
    h2 = submit(state, c2, p2, unique=b"same")
    assert h1 == h2 and len(state.jobs) == 1
    other = submit(state, c2, p2, function=b"g", unique=b"same")
    assert other != h1  # uniques are per function
    assert grab(state, worker, wpeer)[1][0] == h1
    state.workStatus(worker, h1, b"1", b"2", h1 + b"\0" + b"1\0" + b"2")
    state.workData(worker, P.WORK_DATA, h1, h1 + b"\0chunk")
    state.workEnd(worker, P.WORK_COMPLETE, h1, h1 + b"\0done")
    for peer in (p1, p2):
        assert peer.take() == [(P.WORK_STATUS, [h1, b"1", b"2"]), (P.WORK_DATA, [h1, b"chunk"]),
                               (P.WORK_COMPLETE, [h1, b"done"])]
    # The unique is free again.
    assert submit(state, c1, p1, unique=b"same") == b"H:t:3"


def test_dashUniqueCoalescesOnPayload():
    state, _ = makeState()
    client, cpeer = connect(state)
    a = submit(state, client, cpeer, unique=b"-", payload=b"same", background=True)
    b = submit(state, client, cpeer, unique=b"-", payload=b"same", background=True)
    c = submit(state, client, cpeer, unique=b"-", payload=b"other", background=True)
    d = submit(state, client, cpeer, unique=b"-", payload=b"", background=True)
    e = submit(state, client, cpeer, unique=b"-", payload=b"", background=True)
    assert a == b and len({a, c, d, e}) == 4


def test_emptyUniqueNeverCoalesces():
    state, _ = makeState()
    client, cpeer = connect(state)
    assert submit(state, client, cpeer) != submit(state, client, cpeer)


def test_uniqueTooLarge():
    state, _ = makeState()
    client, cpeer = connect(state)
    submit(state, client, cpeer, unique=b"u" * 64)
    state.submit(client, b"f", b"u" * 65, b"x")
    assert cpeer.take() == [(P.ERROR, [b"ARGUMENT_TOO_LARGE", b"Unique value too large"])]


def test_preSleepAnswersNoopAtOnceWhenWorkIsWaiting():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    submit(state, client, cpeer, background=True)
    state.preSleep(worker)
    assert wpeer.take() == [(P.NOOP, [])]
    assert not worker.sleeping


def test_oneNoopPerSleepNeverAStorm():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.preSleep(worker)
    assert wpeer.take() == []
    for _ in range(5):
        submit(state, client, cpeer, background=True)
    assert wpeer.take() == [(P.NOOP, [])]
    grab(state, worker, wpeer)
    state.preSleep(worker)
    assert wpeer.take() == [(P.NOOP, [])]  # work still waiting


def test_wakeupWakesOneSleeperPerJobByDefault():
    state, _ = makeState()
    client, cpeer = connect(state)
    workers = [connect(state) for _ in range(3)]
    for session, peer in workers:
        state.canDo(session, b"f")
        state.preSleep(session)
    submit(state, client, cpeer, background=True)
    assert [len(peer.take()) for _, peer in workers] == [1, 0, 0]
    submit(state, client, cpeer, background=True)
    assert [len(peer.take()) for _, peer in workers] == [0, 1, 0]


def test_wakeupZeroWakesEverySleeper():
    state, _ = makeState(workerWakeup=0)
    client, cpeer = connect(state)
    workers = [connect(state) for _ in range(3)]
    for session, peer in workers:
        state.canDo(session, b"f")
        state.preSleep(session)
    submit(state, client, cpeer, background=True)
    assert [peer.take() for _, peer in workers] == [[(P.NOOP, [])]] * 3


def test_sleepersOfOtherFunctionsAreNotWoken():
    state, _ = makeState(workerWakeup=0)
    client, cpeer = connect(state)
    idle, ipeer = connect(state)
    state.canDo(idle, b"other")
    state.preSleep(idle)
    submit(state, client, cpeer, background=True)
    assert ipeer.take() == []


def test_workerDisconnectRequeuesAtTheTail():
    state, _ = makeState()
    client, cpeer = connect(state)
    w1, p1 = connect(state)
    state.canDo(w1, b"f")
    first = submit(state, client, cpeer, payload=b"first")
    grab(state, w1, p1)
    state.workStatus(w1, first, b"1", b"2", first + b"\0" b"1\0" b"2")
    assert cpeer.take() == [(P.WORK_STATUS, [first, b"1", b"2"])]
    submit(state, client, cpeer, payload=b"second")
    state.disconnect(w1)
    w2, p2 = connect(state)
    state.canDo(w2, b"f")
    assert grab(state, w2, p2)[1][3] == b"second"
    assert grab(state, w2, p2)[1][0] == first
    assert state.jobs[first].attempts == 1
    assert state.jobs[first].numerator == b"0"
    assert cpeer.take() == []  # the client is told nothing
    state.workEnd(w2, P.WORK_COMPLETE, first, first + b"\0ok")
    assert cpeer.take() == [(P.WORK_COMPLETE, [first, b"ok"])]


def test_jobRetriesFailsTheJob():
    state, _ = makeState(jobRetries=2)
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer)
    for attempt in range(2):
        worker, wpeer = connect(state)
        state.canDo(worker, b"f")
        assert grab(state, worker, wpeer)[1][0] == handle
        state.disconnect(worker)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]
    assert state.jobs == {} and b"f" not in state.functions  # unused: forgotten


def test_sleepingWorkerIsWokenWhenAHeldJobIsRequeued():
    state, _ = makeState()
    client, cpeer = connect(state)
    w1, p1 = connect(state)
    w2, p2 = connect(state)
    state.canDo(w1, b"f")
    state.canDo(w2, b"f")
    submit(state, client, cpeer)
    grab(state, w1, p1)
    state.preSleep(w2)
    state.disconnect(w1)
    assert p2.take() == [(P.NOOP, [])]


def test_clientDisconnectDropsItsQueuedForegroundJobs():
    state, _ = makeState()
    client, cpeer = connect(state)
    other, opeer = connect(state)
    alone = submit(state, client, cpeer, unique=b"alone")
    shared = submit(state, client, cpeer, unique=b"shared")
    submit(state, other, opeer, unique=b"shared")
    state.disconnect(client)
    assert alone not in state.jobs and shared in state.jobs
    assert state.functions[b"f"].total() == 1
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    assert grab(state, worker, wpeer)[1][0] == shared
    assert grab(state, worker, wpeer)[0] == P.NO_JOB


def test_backgroundJobSurvivesItsCoalescedForegroundClient():
    # gearmand loses the background job here (PROTOCOL.md 4.10); txgear keeps it.
    state, _ = makeState()
    bg, bpeer = connect(state)
    fg, fpeer = connect(state)
    handle = submit(state, bg, bpeer, unique=b"u9", background=True)
    assert submit(state, fg, fpeer, unique=b"u9") == handle
    state.disconnect(fg)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    assert grab(state, worker, wpeer)[1][0] == handle


def test_runningForegroundJobOfAGoneClientCompletesQuietly():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    state.disconnect(client)
    state.workData(worker, P.WORK_DATA, handle, handle + b"\0x")
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0x")
    assert wpeer.take() == [] and state.jobs == {}


def test_workResultsFromANonHolderAreRejected():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    other, opeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    state.workEnd(other, P.WORK_COMPLETE, handle, handle + b"\0x")
    state.workData(other, P.WORK_DATA, handle, handle + b"\0x")
    state.workEnd(other, P.WORK_EXCEPTION, handle, handle + b"\0x")
    state.workStatus(other, b"H:nope", b"1", b"2", b"H:nope\0" b"1\0" b"2")
    assert [args[1] for _, args in opeer.take()] == [
        b"Job given in work result not found", b"Job does not exist on server",
        b"An exception was received for a job that does not exist",
        b"Job given in work result not found"]
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0x")
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0x")  # twice
    assert wpeer.take() == [(P.ERROR, [b"JOB_NOT_FOUND", b"Job given in work result not found"])]


def test_exceptionGoesToClientsThatAskedAndFailToOthers():
    state, _ = makeState()
    asked, apeer = connect(state)
    plain, ppeer = connect(state)
    asked.exceptions = True
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, asked, apeer, unique=b"u")
    submit(state, plain, ppeer, unique=b"u")
    grab(state, worker, wpeer)
    state.workEnd(worker, P.WORK_EXCEPTION, handle, handle + b"\0boom")
    assert apeer.take() == [(P.WORK_EXCEPTION, [handle, b"boom"])]
    assert ppeer.take() == [(P.WORK_FAIL, [handle])]  # no stray NUL, unlike gearmand
    assert state.jobs == {}


def test_getStatus():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, client, cpeer, unique=b"u1", background=True)
    state.getStatus(client, handle)
    assert cpeer.take() == [(P.STATUS_RES, [handle, b"1", b"0", b"0", b"0"])]
    grab(state, worker, wpeer)
    state.workStatus(worker, handle, b"3", b"10", handle + b"\0" b"3\0" b"10")
    state.getStatus(client, handle)
    state.getStatusUnique(client, b"u1")
    state.getStatus(client, b"H:unknown")
    state.getStatusUnique(client, b"nope")
    assert cpeer.take() == [
        (P.STATUS_RES, [handle, b"1", b"1", b"3", b"10"]),
        (P.STATUS_RES_UNIQUE, [b"u1", b"1", b"1", b"3", b"10", b"0"]),
        (P.STATUS_RES, [b"H:unknown", b"0", b"0", b"0", b"0"]),
        (P.STATUS_RES_UNIQUE, [b"nope", b"0", b"0", b"0", b"0", b"0"]),
    ]


def test_statusUniqueCountsForegroundClients():
    state, _ = makeState()
    peers = [connect(state) for _ in range(3)]
    for session, peer in peers:
        submit(state, session, peer, unique=b"u")
    submit(state, peers[0][0], peers[0][1], unique=b"u", background=True)
    state.getStatusUnique(peers[0][0], b"u")
    assert peers[0][1].take()[0][1][5] == b"3"


def test_canDoTimeoutRequeuesWhileJobRetriesAllow():
    state, clock = makeState(jobRetries=2)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f", timeout=1.5)
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    clock.advance(1.4)
    assert state.jobs[handle].worker is worker
    clock.advance(0.2)
    job = state.jobs[handle]
    assert job.worker is None and job.attempts == 1 and state.functions[b"f"].queued == 1
    # The worker's late result is dropped quietly; the job waits for another grab.
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0late")
    assert wpeer.take() == [] and state.jobs[handle].state == 1
    assert clock.getDelayedCalls() == []


def test_completionCancelsTheTimeout():
    state, clock = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f", timeout=5)
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0ok")
    assert clock.getDelayedCalls() == []


def test_epochJobRunsAtItsTimeAndWakesSleepers():
    state, clock = makeState()
    clock.advance(1000)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.preSleep(worker)
    late = submit(state, client, cpeer, payload=b"late", background=True, when=1010)
    early = submit(state, client, cpeer, payload=b"early", background=True, when=1005)
    assert wpeer.take() == []
    state.grab(worker)
    assert wpeer.take() == [(P.NO_JOB, [])]
    assert state.functions[b"f"].total() == 2
    state.preSleep(worker)
    clock.advance(5)
    assert wpeer.take() == [(P.NOOP, [])]
    assert grab(state, worker, wpeer)[1][0] == early
    clock.advance(5)
    assert grab(state, worker, wpeer)[1][0] == late
    assert clock.getDelayedCalls() == []


def test_epochInThePastRunsNow():
    state, clock = makeState()
    clock.advance(1000)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    submit(state, client, cpeer, background=True, when=10)
    assert grab(state, worker, wpeer)[0] == P.JOB_ASSIGN_UNIQ


def test_maxQueue():
    state, _ = makeState()
    client, cpeer = connect(state)
    submit(state, client, cpeer, unique=b"a", background=True)
    state.setMaxQueue(b"f", [0, 2, 0])
    submit(state, client, cpeer, unique=b"b", background=True)
    state.submit(client, b"f", b"c", b"x", background=True)
    assert cpeer.take() == [(P.ERROR, [b"QUEUE_ERROR", b"Job queue is full"])]
    # Coalescing onto an existing job is still accepted; other priorities too.
    submit(state, client, cpeer, unique=b"a", background=True)
    submit(state, client, cpeer, unique=b"d", background=True, priority=HIGH)


def test_cancelQueuedAndRunningJobs():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    running = submit(state, client, cpeer)
    queued = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    assert state.cancel(queued) and state.cancel(running)
    assert not state.cancel(b"H:t:99")
    assert sorted(cpeer.take()) == sorted([(P.WORK_FAIL, [queued]), (P.WORK_FAIL, [running])])
    assert state.functions[b"f"].total() == 0
    # The worker's late result is dropped silently; the queue is empty.
    state.workEnd(worker, P.WORK_COMPLETE, running, running + b"\0x")
    assert grab(state, worker, wpeer) == (P.NO_JOB, [])


def test_cantDoAndResetAbilities():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.canDo(worker, b"g")
    state.canDo(worker, b"h")
    state.cantDo(worker, b"f")
    assert b"f" not in state.functions and [f.name for f in worker.functions] == [b"g", b"h"]
    submit(state, client, cpeer, background=True)
    assert grab(state, worker, wpeer) == (P.NO_JOB, [])
    submit(state, client, cpeer, function=b"h", background=True)
    state.resetAbilities(worker)
    assert worker.functions == [] and b"g" not in state.functions
    assert state.functions[b"h"].workers == 0 and state.functions[b"h"].queued == 1


def test_dropFunction():
    state, _ = makeState()
    client, cpeer = connect(state)
    state.createFunction(b"Empty")
    assert state.dropFunction(b"empty") is None and b"Empty" not in state.functions
    assert state.dropFunction(b"nope") == "function not found"
    submit(state, client, cpeer, background=True)
    assert state.dropFunction(b"f") == "there are still connected workers or executing clients"


def test_whenIdleAfterStopAccepting():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    state.stopAccepting()
    idle = state.whenIdle()
    state.submit(client, b"f", b"", b"new")
    assert cpeer.take() == [(P.ERROR, [b"QUEUE_ERROR", b"Server is shutting down"])]
    assert not idle.called
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0ok")
    assert idle.called


# -- persistence seam ---------------------------------------------------------


class RecordingStore:
    """An IJobStore whose add/remove Deferreds the test fires by hand."""

    def __init__(self) -> None:
        self.adds: List[Tuple[object, Deferred]] = []
        self.batches: List[list] = []
        self.removed: List[int] = []

    def addMany(self, jobs):
        d: Deferred = Deferred()
        for job in jobs:
            self.adds.append((job, d))
        self.batches.append(list(jobs))
        return d

    def remove(self, job):
        self.removed.append(job.key)
        return succeed(None)


def test_backgroundJobCreatedOnlyOnceStored():
    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.submit(client, b"f", b"u", b"x", background=True)
    state.submit(client, b"f", b"", b"fg")  # foreground after it, same connection
    state.getStatus(client, b"H:t:1")
    assert store.adds == []  # written once per reactor turn
    clock.advance(0)
    assert cpeer.take() == []  # the foreground reply waits behind the background one
    assert grab(state, worker, wpeer)[1][3] == b"fg"  # the background job is not runnable yet
    stored, d = store.adds[0]
    assert (stored.function, stored.unique, stored.payload, stored.priority) == (b"f", b"u", b"x", NORMAL)
    d.callback(None)
    assert [kind for kind, _ in cpeer.take()] == [P.JOB_CREATED, P.JOB_CREATED, P.STATUS_RES]
    handle = grab(state, worker, wpeer)[1][0]
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0ok")
    assert store.removed == [stored.key]


def test_storeFailureAnswersErrorAndDropsTheJob():
    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    state.submit(client, b"f", b"u", b"x", background=True)
    clock.advance(0)
    store.adds[0][1].errback(StoreError("database is down"))
    assert cpeer.take() == [(P.ERROR, [b"QUEUE_ERROR", b"Job could not be stored"])]
    assert state.jobs == {} and b"f" not in state.functions
    # Foreground work is unaffected.
    assert submit(state, client, cpeer, payload=b"fg")


def test_storeFailureSendsPeersNoPathOrInternals():
    """The peer gets a fixed text; only the log gets the store's message."""
    from twisted.logger import capturedLogs

    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    state.submit(client, b"f", b"u", b"x", background=True)
    clock.advance(0)
    with capturedLogs() as events:
        store.adds[0][1].errback(StoreError("sqlite:/srv/secret/queue.sqlite: disk I/O error"))
    ((kind, args),) = cpeer.take()
    assert kind == P.ERROR and b"/srv/secret" not in b"".join(args)
    assert any("/srv/secret" in str(event.get("log_failure", "")) for event in events)


def test_coalescingOntoAJobBeingStored():
    store = RecordingStore()
    state, clock = makeState(store=store)
    c1, p1 = connect(state)
    c2, p2 = connect(state)
    state.submit(c1, b"f", b"u", b"x", background=True)
    state.submit(c2, b"f", b"u", b"x", background=True)
    clock.advance(0)
    assert len(store.adds) == 1 and p2.take() == []
    store.adds[0][1].callback(None)
    assert p1.take() == p2.take() == [(P.JOB_CREATED, [b"H:t:1"])]


def test_loadStoredRecreatesJobsInOrder():
    from txgear.jobs import StoredJob

    state, _ = makeState(store=RecordingStore())
    records = [StoredJob(7, b"f", b"u1", b"one", HIGH), StoredJob(3, b"f", b"", b"two"),
               StoredJob(5, b"g", b"u3", b"three", LOW)]
    assert state.loadStored(records) == 3
    client, cpeer = connect(state)
    # Coalescing works across the restart.
    assert submit(state, client, cpeer, unique=b"u1", background=True) == b"H:t:7"
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.canDo(worker, b"g")
    assert [grab(state, worker, wpeer)[1][3] for _ in range(3)] == [b"one", b"two", b"three"]
    # New keys continue after the largest one loaded.
    assert state._nextKey == 8


def test_failedStoreDeferredIsNotLeftUnhandled():
    store = RecordingStore()
    store.addMany = lambda jobs: fail(StoreError("full"))  # type: ignore[assignment]
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    state.submit(client, b"f", b"", b"x", background=True)
    clock.advance(0)
    assert cpeer.take()[0][0] == P.ERROR


@pytest.mark.parametrize("count", [1000])
def test_manyQueuedJobsDoNotSlowAGrabOrCancel(count):
    # O(1): cancelled entries are skipped lazily, counters stay right.
    state, _ = makeState()
    client, cpeer = connect(state)
    handles = [submit(state, client, cpeer, background=True) for _ in range(count)]
    for handle in handles[:-1]:
        assert state.cancel(handle)
    assert state.functions[b"f"].total() == 1
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    assert grab(state, worker, wpeer)[1][0] == handles[-1]
    assert len(state.functions[b"f"].queues[NORMAL]) == 0


def test_gracefulStopWithAStoreLeavesQueuedBackgroundJobsStored():
    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.submit(client, b"f", b"", b"running", background=True)
    state.submit(client, b"f", b"", b"queued", background=True)
    clock.advance(0)
    assert len(store.batches) == 1
    store.adds[0][1].callback(None)
    fg = [args[0] for kind, args in cpeer.take()]
    running = grab(state, worker, wpeer)[1][0]
    state.stopAccepting()
    idle = state.whenIdle()
    assert not idle.called and len(state.jobs) == 1 and store.removed == []
    assert grab(state, worker, wpeer) == (P.NO_JOB, [])
    state.workEnd(worker, P.WORK_COMPLETE, running, running + b"\0ok")
    assert idle.called
    assert store.removed == [store.adds[0][0].key]  # only the completed one
    assert len(fg) == 2


def test_keysIncreaseAndABatchIsOneStoreCall():
    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    for i in range(3):
        state.submit(client, b"f", b"", b"%d" % i, background=True)
    clock.advance(0)
    state.submit(client, b"f", b"", b"later", background=True)
    clock.advance(0)
    assert [[job.key for job in batch] for batch in store.batches] == [[1, 2, 3], [4]]
    assert [job.function for job in store.batches[0]] == [b"f"] * 3
    for batch in {id(d): d for _, d in store.adds}.values():
        batch.callback(None)
    assert [kind for kind, _ in cpeer.take()] == [P.JOB_CREATED] * 4


def test_foregroundJobTurnedBackgroundStaysRunnableWhileStored():
    store = RecordingStore()
    state, clock = makeState(store=store)
    fg, fpeer = connect(state)
    bg, bpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    handle = submit(state, fg, fpeer, unique=b"u")
    assert grab(state, worker, wpeer)[1][0] == handle  # running
    state.submit(bg, b"f", b"u", b"x", background=True)
    clock.advance(0)
    assert bpeer.take() == [] and state.jobs[handle].state == 2  # still RUNNING
    store.adds[0][1].callback(None)
    assert bpeer.take() == [(P.JOB_CREATED, [handle])]
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0ok")
    assert fpeer.take() == [(P.WORK_COMPLETE, [handle, b"ok"])]
    assert store.removed == [store.adds[0][0].key]


def test_onEmptiedAfterALargeQueueDrains():
    from txgear.server._state import LARGE_QUEUE

    calls = []
    state, _ = makeState(onEmptied=lambda: calls.append(len(state.jobs)))
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    # A small queue draining is not worth it.
    handle = submit(state, client, cpeer, background=True)
    grab(state, worker, wpeer)
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0")
    assert calls == []
    for _ in range(LARGE_QUEUE):
        state.submit(client, b"f", b"", b"x", background=True)
    cpeer.take()
    for i in range(LARGE_QUEUE):
        handle = grab(state, worker, wpeer)[1][0]
        state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0")
        # Once when the job table is rebuilt at an eighth, once when empty.
        left = LARGE_QUEUE - 1 - i
        assert calls == ([] if left > LARGE_QUEUE // 8 else [LARGE_QUEUE // 8] if left else
                         [LARGE_QUEUE // 8, 0])


def test_jobTableShrinksAfterALargeDrain():
    """
    A dict never shrinks by deletion: after a large queue drains to an eighth
    of its peak, the job and unique tables are rebuilt at their size (the
    memory a million-job table held stayed in the process before), and the
    same happens again at each eighth, so the copies cost O(1) per job.
    """
    from txgear.server._state import LARGE_QUEUE

    calls = []
    state, _ = makeState(onEmptied=lambda: calls.append(len(state.jobs)))
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    total = LARGE_QUEUE * 8
    for i in range(total):
        state.submit(client, b"f", b"u%d" % i, b"x", background=True)
    cpeer.take()
    table = state.jobs
    for _ in range(total - LARGE_QUEUE):
        handle = grab(state, worker, wpeer)[1][0]
        state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0")
    assert calls == [LARGE_QUEUE]
    assert state.jobs is not table and len(state.jobs) == LARGE_QUEUE
    if platform.python_implementation() == "CPython":
        assert sys.getsizeof(state.jobs) * 4 < sys.getsizeof(table)
    assert len(state._uniqueIndex) == LARGE_QUEUE
    for _ in range(LARGE_QUEUE):
        handle = grab(state, worker, wpeer)[1][0]
        state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0")
    assert calls == [LARGE_QUEUE, LARGE_QUEUE // 8, 0]
    assert state.jobs == {} and state._uniqueIndex == {}
    assert state.functions[b"f"].uniques is None  # its large table let go as well


def test_refusalsAreLogged():
    from twisted.logger import capturedLogs

    state, _ = makeState()
    client, cpeer = connect(state)
    with capturedLogs() as events:
        state.submit(client, b"f", b"u" * 65, b"x")
        state.workEnd(client, P.WORK_COMPLETE, b"H:none", b"H:none\0x")
    messages = [e["log_format"] for e in events]
    assert any("unique id of" in m for m in messages)
    assert any("does not hold" in m for m in messages)
    assert [kind for kind, _ in cpeer.take()] == [P.ERROR, P.ERROR]


# -- memory of functions (issue 8, item 8) ---------------------------------------


def test_unusedFunctionHoldsNoDicts():
    """
    A function only registered by a worker holds no sleeper or unique dicts:
    150,000 names registered by an attacker must cost little and leave little.
    """
    state, _ = makeState()
    session, _ = connect(state)
    state.canDo(session, b"f")
    function = state.functions[b"f"]
    assert function.sleepers is None
    assert function.uniques is None
    assert not isinstance(function.priorityCounts, list)  # the shared zeros
    assert list(function.priorityCounts) == [0, 0, 0]


def test_sleepersAndUniquesAreMadeWhenNeeded():
    """The sleeper and unique dicts appear on first use, and still work."""
    state, _ = makeState()
    worker, workerPeer = connect(state)
    client, clientPeer = connect(state)
    state.canDo(worker, b"f")
    state.preSleep(worker)
    assert list(state.functions[b"f"].sleepers) == [worker]
    h1 = submit(state, client, clientPeer, unique=b"u")
    assert [kind for kind, _ in workerPeer.take()] == [P.NOOP]
    state.submit(client, b"f", b"u", b"x")
    assert clientPeer.take() == [(P.JOB_CREATED, [h1])]  # coalesced by the unique
    assert list(state.functions[b"f"].uniques.values())[0].handle == h1


@pytest.mark.skipif(platform.python_implementation() != "CPython",
                    reason="tracemalloc is CPython's")
def test_functionMemory():
    """A Function, as made for a CAN_DO, takes under 200 bytes (about 410 before, 136 now)."""
    import tracemalloc

    from txgear.server._state import Function

    names = [b"fn-%07d" % i for i in range(2000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        functions = [Function(name) for name in names]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(functions) == len(names)
    perFunction = (held - sys.getsizeof(functions)) / len(names)
    assert perFunction < 200, perFunction


def submitThree(state, session, many):
    """Three background submissions to C{f}: one run (C{many}), or one by one."""
    payloads = [b"a", b"b\0c", b""]
    if many:
        state.submitBackgroundMany(session, b"f", payloads)
    else:
        for payload in payloads:
            state.submit(session, b"f", b"", payload, NORMAL, True)


@pytest.mark.parametrize("clientId", [b"-", b"submitter"])
@pytest.mark.parametrize("known", [False, True])
def test_submitBackgroundManyMakesTheJobsSubmitMakes(clientId, known):
    """
    L{JobServerState.submitBackgroundMany} (a run of SUBMIT_JOB_BG) builds
    its jobs inline: every field, slots and instance dictionary alike, is
    what L{JobServerState.submit} gives the same requests, and so are the
    replies, the queue and the counts.
    """
    from txgear.server._state import Job

    def made(many):
        clock = Clock()
        clock.advance(1234.5)
        state = JobServerState(clock=clock, handlePrefix=b"H:t")
        peer = FakePeer()
        session = state.connect(peer)
        state.setClientId(session, clientId)
        if known:
            # A function with queues and counters already (the fast loop).
            state.submit(session, b"f", b"", b"first", NORMAL, True)
        submitThree(state, session, many)
        fields = [name for name in Job.__slots__ if name != "__dict__"]
        jobs = [({name: getattr(job, name) for name in fields}, vars(job))
                for job in state.jobs.values()]
        function = state.functions[b"f"]
        for fields, _ in jobs:
            assert fields.pop("func") is function
        return (jobs, peer.take(), [[job.handle for job in queue] for queue in function.queues],
                function.queued, function.priorityCounts, list(function.stats.submitted),
                state._nextKey)

    assert made(True) == made(False)
    jobs = made(True)[0]
    assert [fields["since"] for fields, _ in jobs] == [1234.5] * len(jobs)
    assert all(extra == ({"clientId": clientId} if clientId != b"-" else {}) for _, extra in jobs)


def test_storedRepliesLeaveInOneWrite():
    """
    A stored batch's JOB_CREATED replies to one session, and the replies
    held behind them, are written at once, in order, up to a job still
    being written.
    """
    store = RecordingStore()
    state, clock = makeState(store=store)
    session, peer = connect(state)
    writes: List[bytes] = []
    original = peer.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    peer.write = write  # type: ignore[method-assign]
    state.submitBackgroundMany(session, b"f", [b"a", b"b", b"c"])
    session.write(encodeResponse(P.ECHO_RES, b"after"))  # a reply that must wait behind them
    clock.advance(0)
    state.submit(session, b"f", b"", b"d", NORMAL, True)
    clock.advance(0)
    assert writes == []
    store.adds[0][1].callback(None)
    assert len(writes) == 1
    assert [(kind, args[0]) for kind, args in peer.take()] == [
        (P.JOB_CREATED, b"H:t:1"), (P.JOB_CREATED, b"H:t:2"), (P.JOB_CREATED, b"H:t:3"),
        (P.ECHO_RES, b"after")]
    store.adds[-1][1].callback(None)
    assert len(writes) == 2
    assert [(kind, args[0]) for kind, args in peer.take()] == [(P.JOB_CREATED, b"H:t:4")]


@pytest.mark.parametrize("clientId", [b"-", b"submitter"])
@pytest.mark.parametrize("held", [False, True])
def test_submitBackgroundManyWithAStoreMakesTheJobsSubmitMakes(clientId, held):
    """
    With a store, L{JobServerState.submitBackgroundMany} builds its jobs
    inline too: each job, the batch the store is given, the JOB_CREATED
    replies held until the store has them (behind a reply already held),
    and, once stored, the queue and counts are what L{JobServerState.submit}
    gives the same requests.
    """
    from txgear.server._state import Job

    def snapshot(state):
        fields = [name for name in Job.__slots__ if name not in ("__dict__", "func")]
        function = state.functions[b"f"]
        return ([({name: getattr(job, name) for name in fields}, vars(job), job.func is function)
                 for job in state.jobs.values()],
                [[job.handle for job in queue] for queue in function.queues or ()],
                function.queued, function.pending, function.priorityCounts,
                list(function.stats.submitted), state._nextKey)

    def made(many):
        store = RecordingStore()
        state, clock = makeState(store=store)
        clock.advance(1234.5)
        session, peer = connect(state)
        state.setClientId(session, clientId)
        state.submit(session, b"f", b"", b"first", NORMAL, True)
        if not held:
            clock.advance(0)
            store.adds[0][1].callback(None)
        submitThree(state, session, many)
        before = (snapshot(state), peer.take())
        clock.advance(0)
        batches = [[job.handle for job in batch] for batch in store.batches]
        clock.advance(1)
        for d in {id(d): d for _, d in store.adds}.values():
            if not d.called:
                d.callback(None)
        return before, batches, snapshot(state), peer.take()

    assert made(True) == made(False)
    before, batches, after, replies = made(True)
    assert before[1] == ([] if held else [(P.JOB_CREATED, [b"H:t:1"])])
    assert batches[-1][-3:] == [b"H:t:2", b"H:t:3", b"H:t:4"]
    assert [kind for kind, _ in replies] == [P.JOB_CREATED] * (4 if held else 3)
    assert after[2] == 4 and after[3] == 0
    assert [fields["since"] for fields, _, _ in after[0]] == [1235.5 if held else 1234.5] + [1235.5] * 3
