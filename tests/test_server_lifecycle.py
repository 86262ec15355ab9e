"""
Tests for the job lifecycle of the server state (txgear.server._state and
the modules it delegates to): timeouts, the function table, store-pending
jobs, handles across restarts, payload release and wake-ups. No I/O.
"""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.test_server_state import P, RecordingStore, connect, grab, makeState, submit
from txgear.jobs import StoredJob
from txgear.server._state import HIGH, NORMAL, RUNNING


def _released(job) -> bool:
    return not job.payload


# -- item 13: CAN_DO_TIMEOUT ---------------------------------------------------


def test_timedOutJobFailsToItsClientsAndTheLateReportIsDroppedQuietly():
    from twisted.logger import capturedLogs

    state, clock = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f", timeout=1.5)
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    clock.advance(1.4)
    assert cpeer.take() == []
    clock.advance(0.2)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]
    assert state.jobs == {} and state.functions[b"f"].total() == 0
    with capturedLogs() as events:
        state.workStatus(worker, handle, b"1", b"2", handle + b"\x001\x002")
        state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0late")
    assert wpeer.take() == [] and list(events) == []
    assert clock.getDelayedCalls() == []


def test_timedOutJobIsRetriedOnlyAsJobRetriesAllow():
    state, clock = makeState(jobRetries=2)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f", timeout=1)
    handle = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    clock.advance(1)
    job = state.jobs[handle]
    assert job.worker is None and job.attempts == 1 and state.functions[b"f"].queued == 1
    assert cpeer.take() == []
    assert grab(state, worker, wpeer)[1][0] == handle
    clock.advance(1)
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]
    assert state.jobs == {} and clock.getDelayedCalls() == []


def test_canDoTimeoutBelowOneSecondIsRaisedToOneSecond():
    from tests.test_server_protocol import Conn
    from txgear.server import GearmanServerFactory, JobServerState

    factory = GearmanServerFactory(JobServerState(clock=Clock(), handlePrefix=b"H:t"))
    worker = Conn(factory)
    worker.send(P.CAN_DO_TIMEOUT, b"f", b"3")
    worker.send(P.CAN_DO_TIMEOUT, b"g", b"2500")
    worker.send(P.CAN_DO_TIMEOUT, b"h", b"0")
    timeouts = {f.name: t for f, t in worker.protocol.session.timeouts.items()}
    assert timeouts == {b"f": 1.0, b"g": 2.5}


# -- item 9: one registration per function per connection ----------------------


def test_repeatedCanDoIsOneRegistration():
    state, _ = makeState()
    worker, wpeer = connect(state)
    for _ in range(1000):
        state.canDo(worker, b"f")
    state.canDo(worker, b"g")
    state.canDo(worker, b"f", timeout=2)
    assert [f.name for f in worker.functions] == [b"f", b"g"]
    assert state.functions[b"f"].workers == 1
    assert worker.timeouts == {state.functions[b"f"]: 2}
    state.cantDo(worker, b"f")
    assert [f.name for f in worker.functions] == [b"g"] and b"f" not in state.functions


# -- item 8: the function table ----------------------------------------------


def test_functionsAreForgottenWhenNothingUsesThem():
    state, _ = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"w")
    state.disconnect(worker)
    assert b"w" not in state.functions
    # A job keeps its function while it exists in any state.
    handle = submit(state, client, cpeer, function=b"j", background=True)
    assert state.functions[b"j"].total() == 1
    assert state.cancel(handle) and b"j" not in state.functions
    # Abandoned foreground jobs go, and so does their function.
    submit(state, client, cpeer, function=b"a")
    state.disconnect(client)
    assert state.functions == {}


def test_createdFunctionsAreKept():
    state, _ = makeState()
    worker, wpeer = connect(state)
    assert state.createFunction(b"made") is None
    state.canDo(worker, b"made")
    state.disconnect(worker)
    assert b"made" in state.functions
    assert state.dropFunction(b"made") is None and state.functions == {}


def test_queuesAreMadeOnlyWhenAJobIsQueued():
    state, _ = makeState()
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    function = state.functions[b"f"]
    assert function.queues is None
    state.grab(worker)
    assert wpeer.take() == [(P.NO_JOB, [])] and function.queues is None
    client, cpeer = connect(state)
    submit(state, client, cpeer)
    assert function.queues is not None


def test_functionCap():
    state, _ = makeState(maxFunctions=2)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"a")
    state.canDo(worker, b"b")
    state.canDo(worker, b"c")
    assert sorted(state.functions) == [b"a", b"b"] and [f.name for f in worker.functions] == [b"a", b"b"]
    state.submit(client, b"c", b"", b"x")
    assert cpeer.take() == [(P.ERROR, [b"QUEUE_ERROR", b"Too many functions"])]
    assert state.createFunction(b"c") == "too many functions"
    # Known functions still work, and a forgotten one makes room.
    submit(state, client, cpeer, function=b"a")
    state.cantDo(worker, b"b")
    submit(state, client, cpeer, function=b"c")


def test_storedJobsAreLoadedPastTheFunctionCap():
    state, _ = makeState(maxFunctions=1, store=RecordingStore())
    assert state.loadStored([StoredJob(1, b"a", b"", b"1"), StoredJob(2, b"b", b"", b"2")]) == 2
    assert sorted(state.functions) == [b"a", b"b"]


# -- item 14: maxqueue with a store ---------------------------------------------


def test_maxQueueCountsJobsWaitingForTheStore():
    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    assert state.createFunction(b"f") is None
    state.setMaxQueue(b"f", [2, 2, 2])
    for i in range(3):
        state.submit(client, b"f", b"", b"%d" % i, background=True)
    assert cpeer.take() == []  # the first two wait for the store, so does the refusal
    assert state.functions[b"f"].total() == 2
    clock.advance(0)
    store.adds[0][1].callback(None)
    assert [kind for kind, _ in cpeer.take()] == [P.JOB_CREATED, P.JOB_CREATED, P.ERROR]
    assert len(store.adds) == 2


# -- item 15: drop function ----------------------------------------------------


def test_dropFunctionRefusesScheduledJobsAndJobsBeingStored():
    refusal = "there are still connected workers or executing clients"
    store = RecordingStore()
    state, clock = makeState(store=store)
    clock.advance(1000)
    client, cpeer = connect(state)
    state.submit(client, b"stored", b"", b"x", background=True)
    assert state.dropFunction(b"stored") == refusal
    clock.advance(0)
    store.adds[0][1].callback(None)
    state2, clock2 = makeState()
    clock2.advance(1000)
    client2, cpeer2 = connect(state2)
    submit(state2, client2, cpeer2, function=b"later", background=True, when=2000)
    assert state2.dropFunction(b"later") == refusal
    clock2.advance(1000)
    assert state2.functions[b"later"].queued == 1


# -- item 16: uniques -----------------------------------------------------------


def test_dashUniquesAndSharedUniquesAreIndexedForConstantTimeRemoval():
    state, _ = makeState()
    client, cpeer = connect(state)
    dashes = [submit(state, client, cpeer, unique=b"-", payload=b"%d" % i, background=True)
              for i in range(5)]
    shared = [submit(state, client, cpeer, function=b"f%d" % i, unique=b"u", background=True)
              for i in range(5)]
    for handles in (dashes, shared):
        index = state._uniqueIndex[state.jobs[handles[0]].unique]
        assert not isinstance(index, list)  # a list would make each removal O(n)
    for handle in reversed(dashes[1:]):
        assert state.cancel(handle)
    state.cancel(shared[0])
    state.getStatusUnique(client, b"-")
    state.getStatusUnique(client, b"u")
    assert [args[:2] for _, args in cpeer.take()] == [[b"-", b"1"], [b"u", b"1"]]
    for handle in (dashes[0], *shared[1:]):
        state.cancel(handle)
    assert state._uniqueIndex == {}


# -- item 17: payloads of abandoned, cancelled and scheduled jobs ---------------


def test_abandonedAndCancelledJobsReleaseTheirPayloadsAtOnce():
    state, _ = makeState()
    client, cpeer = connect(state)
    other, opeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    for i in range(200):
        state.submit(client, b"f", b"", b"payload %d" % i)
    jobs = list(state.jobs.values())
    kept = submit(state, other, opeer, payload=b"kept")
    cancelled = submit(state, other, opeer, payload=b"cancelled", background=True)
    cancelledJob = state.jobs[cancelled]
    state.disconnect(client)
    state.cancel(cancelled)
    assert all(_released(job) for job in jobs)
    function = state.functions[b"f"]
    assert function.queued == 1
    # Dead entries do not pile up in the queue either, and are counted right.
    for count in range(65, 70):
        state2, _ = makeState()
        c2, p2 = connect(state2)
        state2.canDo(c2, b"f")
        for i in range(count + 1):
            state2.submit(c2, b"f", b"", b"p", background=True)
        for handle in list(state2.jobs)[:count]:
            state2.cancel(handle)
        f2 = state2.functions[b"f"]
        assert sum(len(q) for q in f2.queues) == f2.queued + f2.dead, count
    assert sum(len(q) for q in function.queues) <= 64
    assert grab(state, worker, wpeer)[1][0] == kept
    assert _released(cancelledJob)


def test_cancelledScheduledJobLeavesTheTimer():
    state, clock = makeState()
    clock.advance(1000)
    client, cpeer = connect(state)
    jobs = []
    for i in range(100):
        jobs.append(submit(state, client, cpeer, payload=b"p%d" % i, background=True,
                           when=5000 + i))
    held = [state.jobs[h] for h in jobs]
    for handle in jobs:
        assert state.cancel(handle)
    assert clock.getDelayedCalls() == []
    assert len(state.scheduler) == 0
    assert all(_released(job) for job in held)


# -- item 20: handles ---------------------------------------------------------


def test_handlesAreStoreKeysAndSurviveARestart():
    store = RecordingStore()
    state, clock = makeState(store=store)
    records = [StoredJob(7, b"f", b"u1", b"one", HIGH), StoredJob(3, b"f", b"", b"two")]
    assert state.loadStored(records) == 2
    assert sorted(state.jobs) == [b"H:t:3", b"H:t:7"]
    client, cpeer = connect(state)
    assert submit(state, client, cpeer, unique=b"u1", background=True) == b"H:t:7"
    # New jobs, memory ones too, continue after the largest key loaded.
    assert submit(state, client, cpeer, payload=b"fg") == b"H:t:8"
    state.submit(client, b"f", b"", b"bg", background=True)
    clock.advance(0)
    store.adds[0][1].callback(None)
    assert cpeer.take() == [(P.JOB_CREATED, [b"H:t:9"])]
    assert store.adds[0][0].key == 9


# -- item 21: a woken worker that does not grab -----------------------------------


def test_aWokenWorkerThatDoesNotGrabDoesNotStrandTheJob():
    from txgear.server._state import WAKE_RECHECK

    state, clock = makeState()
    client, cpeer = connect(state)
    hung, hpeer = connect(state)
    healthy, peer = connect(state)
    for session in (hung, healthy):
        state.canDo(session, b"f")
        state.preSleep(session)
    handle = submit(state, client, cpeer)
    assert hpeer.take() == [(P.NOOP, [])] and peer.take() == []
    clock.advance(WAKE_RECHECK)
    assert peer.take() == [(P.NOOP, [])]
    assert grab(state, healthy, peer)[1][0] == handle
    assert clock.getDelayedCalls() == []


def test_noRecheckTimerOnceTheWokenWorkerGrabs():
    from txgear.server._state import WAKE_RECHECK

    state, clock = makeState()
    client, cpeer = connect(state)
    first, fpeer = connect(state)
    second, speer = connect(state)
    for session in (first, second):
        state.canDo(session, b"f")
        state.preSleep(session)
    handle = submit(state, client, cpeer)
    assert fpeer.take() == [(P.NOOP, [])]
    assert grab(state, first, fpeer)[1][0] == handle
    clock.advance(WAKE_RECHECK)
    assert speer.take() == []
    assert clock.getDelayedCalls() == []


def test_recheckWaitsAFullPeriodAfterEachNoop():
    from txgear.server._state import WAKE_RECHECK

    state, clock = makeState()
    client, cpeer = connect(state)
    sessions = [connect(state) for _ in range(3)]
    for session, _ in sessions:
        state.canDo(session, b"f")
        state.preSleep(session)
    handle = submit(state, client, cpeer)
    assert sessions[0][1].take() == [(P.NOOP, [])]
    assert grab(state, sessions[0][0], sessions[0][1])[1][0] == handle
    # A later job, whose woken worker hangs, is rechecked a full period after its NOOP.
    clock.advance(WAKE_RECHECK * 0.8)
    submit(state, client, cpeer)
    assert sessions[1][1].take() == [(P.NOOP, [])]
    clock.advance(WAKE_RECHECK * 0.8)
    assert sessions[2][1].take() == []
    clock.advance(WAKE_RECHECK * 0.2)
    assert sessions[2][1].take() == [(P.NOOP, [])]
    assert clock.getDelayedCalls() == []


def test_recheckStopsWhenNoSleeperIsLeft():
    from txgear.server._state import WAKE_RECHECK

    state, clock = makeState()
    client, cpeer = connect(state)
    hung, hpeer = connect(state)
    state.canDo(hung, b"f")
    state.preSleep(hung)
    submit(state, client, cpeer)
    assert hpeer.take() == [(P.NOOP, [])]
    clock.advance(WAKE_RECHECK)
    assert clock.getDelayedCalls() == []
    state.disconnect(hung)
    state.disconnect(client)
    assert clock.getDelayedCalls() == [] and state.jobs == {}


# -- the design: one lifecycle, IServerPeer ----------------------------------------


def test_countersFollowEveryTransition():
    store = RecordingStore()
    state, clock = makeState(store=store)
    clock.advance(1000)
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    state.submit(client, b"f", b"", b"pending", background=True)
    state.submit(client, b"f", b"", b"later", background=True, when=1500)
    function = state.functions[b"f"]
    assert (function.pending, function.queued, function.scheduled, function.running) == (2, 0, 0, 0)
    clock.advance(0)
    store.adds[0][1].callback(None)
    assert (function.pending, function.queued, function.scheduled, function.running) == (0, 1, 1, 0)
    handle = grab(state, worker, wpeer)[1][0]
    assert (function.queued, function.running, function.priorityCounts) == (0, 1, [0, 0, 0])
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0")
    clock.advance(500)
    assert (function.queued, function.scheduled, function.priorityCounts[NORMAL]) == (1, 0, 1)


def test_serverProtocolProvidesIServerPeer():
    from zope.interface.verify import verifyClass

    from txgear.interfaces import IServerPeer
    from txgear.server._protocol import GearmanServerProtocol

    assert verifyClass(IServerPeer, GearmanServerProtocol, tentative=True)


@pytest.mark.parametrize("unused", [None])
def test_storeStateIsTyped(unused):
    from txgear.server._storequeue import StoreState

    store = RecordingStore()
    state, clock = makeState(store=store)
    client, cpeer = connect(state)
    state.submit(client, b"f", b"", b"x", background=True)
    job = next(iter(state.jobs.values()))
    assert job.storeState is StoreState.WRITING
    clock.advance(0)
    store.adds[0][1].callback(None)
    assert job.storeState is StoreState.STORED


def test_aKeyLoadedTwiceKeepsTheFirstJobAndItsRecord():
    store = RecordingStore()
    state, _ = makeState(store=store)
    assert state.loadStored([StoredJob(4, b"f", b"", b"first"), StoredJob(4, b"f", b"", b"copy")]) == 1
    assert state.jobs[b"H:t:4"].payload == b"first" and store.removed == []


def test_aJobCancelledWhileBeingStoredLetsGoOfItsPayloadWhateverTheStoreSays():
    from txgear.errors import StoreError

    for outcome in ("stored", "failed"):
        store = RecordingStore()
        state, clock = makeState(store=store)
        fg, fpeer = connect(state)
        bg, bpeer = connect(state)
        handle = submit(state, fg, fpeer, unique=b"u", payload=b"big")
        state.submit(bg, b"f", b"u", b"big", background=True)  # turns it background
        job = state.jobs[handle]
        assert state.cancel(handle)
        clock.advance(0)
        assert store.adds[0][0].payload == b"big"  # still there for the store
        d = store.adds[0][1]
        d.callback(None) if outcome == "stored" else d.errback(StoreError("down"))
        assert job.payload == b"", outcome
        assert store.removed == ([job.key] if outcome == "stored" else [])


# -- the stop: an event when no worker holds a job -----------------------------


def test_whenNoneRunningFiresWhenTheLastHeldJobEnds():
    state, clock = makeState()
    client, cpeer = connect(state)
    worker, wpeer = connect(state)
    other, opeer = connect(state)
    state.canDo(worker, b"f")
    state.canDo(other, b"f")
    first = submit(state, client, cpeer)
    second = submit(state, client, cpeer)
    grab(state, worker, wpeer)
    grab(state, other, opeer)
    fired = []
    state.whenNoneRunning().addCallback(fired.append)
    state.workEnd(worker, P.WORK_COMPLETE, first, first + b"\0done")
    assert fired == []
    # A lost worker puts its job back in the queue: nothing runs any more.
    state.disconnect(other)
    assert fired == [None] and state.jobs[second].state != RUNNING
    # Nothing running: fires at once; a waiter cancelled meanwhile is skipped.
    done = []
    state.whenNoneRunning().addCallback(done.append)
    assert done == [None]
    grab(state, worker, wpeer)
    cancelled = state.whenNoneRunning()
    cancelled.addErrback(lambda f: None)
    cancelled.cancel()
    state.workEnd(worker, P.WORK_COMPLETE, second, second + b"\0done")
    assert clock.getDelayedCalls() == []


# -- memory comes back when a large function table empties -----------------------


def test_aLargeFunctionTableThatEmptiesIsRebuiltAndReclaimed():
    import sys

    reclaimed = []
    state, clock = makeState(onEmptied=lambda: reclaimed.append(len(state.functions)))
    workers = [connect(state)[0] for _ in range(4)]
    for k, worker in enumerate(workers):
        for i in range(5000):
            state.canDo(worker, b"f-%d-%d" % (k, i))
    assert len(state.functions) == 20000 and reclaimed == []
    table = state.functions
    large = sys.getsizeof(table, 0)  # 0 on PyPy, which has no getsizeof
    for worker in workers:
        state.disconnect(worker)
    # The dict's table shrank with it (a dict never shrinks by deletion alone),
    # and the server was told to give memory back, once the table was nearly empty.
    assert state.functions == {} and state.functions is not table
    assert sys.getsizeof(state.functions, 0) * 4 <= large
    assert len(reclaimed) == 1 and reclaimed[0] <= 20000 // 8
    # Small tables coming and going never ask for it.
    worker = connect(state)[0]
    for i in range(500):
        state.canDo(worker, b"g-%d" % i)
    state.disconnect(worker)
    assert len(reclaimed) == 1
