"""
The dead set in the job server's state (txgear.server._deadset with
txgear.server._state and the admin commands): background jobs that use up
their attempts enter it, foreground ones never; retry, purge, limits by size
and age, reload at start; C{show dead} byte for byte. Deterministic: a
task.Clock and the memory store.
"""
from __future__ import annotations

from typing import Any, Dict

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from tests.test_server_retry import START, makeState, runAndEnd
from tests.test_server_state import P, connect, grab, submit
from txgear.jobs import DeadJob, StoredJob
from txgear.server._admin import AdminCommands
from txgear.server._stats import DEAD
from txgear.store import MemoryJobStore


def admin(state: Any, line: bytes) -> bytes:
    session, _ = connect(state)
    reply, action = AdminCommands(state, lambda s: (b"1", b"127.0.0.1")).run(session, line)
    assert action is None
    assert isinstance(reply, bytes)
    return reply


def storedState(policy: str = "attempts:2,on:fail+exception", **kwargs: Any) -> Any:
    jobs: Dict[int, StoredJob] = {}
    dead: Dict[int, DeadJob] = {}
    store = MemoryJobStore(jobs, dead)
    state, clock = makeState(policy, store=store, **kwargs)
    return state, clock, store


def submitBackground(state: Any, clock: Any, function: bytes = b"f", unique: bytes = b"",
                     payload: bytes = b"x") -> bytes:
    client, cpeer = connect(state)
    state.submit(client, function, unique, payload, background=True)
    if state.storeQueue is not None:
        clock.advance(0)  # the store's batch
    (kind, (handle,)), = cpeer.take()
    assert kind == P.JOB_CREATED
    return handle


def kill(state: Any, clock: Any, handle: bytes, attempts: int = 2, outcome: str = "fail") -> None:
    for _ in range(attempts):
        runAndEnd(state, clock, outcome, handle)


def failIn(state: Any, function: bytes, handle: bytes) -> None:
    """A worker of C{function} grabs C{handle} and sends WORK_FAIL."""
    session, peer = connect(state)
    state.canDo(session, function)
    assert grab(state, session, peer)[1][0] == handle
    state.workEnd(session, P.WORK_FAIL, handle, handle)


def statsOf(state: Any, function: bytes) -> Any:
    if function in state.functions:
        return state.functions[function].stats
    return state.stats.retired[function]


@pytest.mark.parametrize("withStore", [True, False])
def test_exhaustedBackgroundJobIsDead(withStore: bool) -> None:
    """
    A background job that used up its attempts enters the dead set with its
    attempts, last error and time of death, counted as C{dead}; with a store
    it leaves the queue for the store's dead set, payload kept.
    """
    if withStore:
        state, clock, store = storedState()
    else:
        state, clock = makeState("attempts:2,on:fail+exception")
        store = state.dead.store
    handle = submitBackground(state, clock, unique=b"u1", payload=b"the payload")
    kill(state, clock, handle, outcome="exception")
    assert state.jobs == {}
    entry, = state.dead.newest()
    assert (entry.handle, entry.function, entry.unique, entry.attempts, entry.lastError,
            entry.diedAt, entry.payloadSize) == (handle, b"f", b"u1", 2, b"Traceback: boom",
                                                 int(START * 1000), 11)
    assert store.jobs == {}
    stored, = store.dead.values()
    assert (stored.key, stored.payload, stored.attempts) == (1, b"the payload", 2)
    assert statsOf(state, b"f").finished[DEAD] == 1
    assert state.dead.counts() == {b"f": 1}


def test_foregroundJobNeverEntersTheDeadSet() -> None:
    """A foreground client heard WORK_FAIL: its job is gone, not dead."""
    state, clock, store = storedState("attempts:2,on:lost")
    client, cpeer = connect(state)
    handle = submit(state, client, cpeer)
    kill(state, clock, handle, outcome="lost")
    assert cpeer.take() == [(P.WORK_FAIL, [handle])]
    assert len(state.dead) == 0 and store.dead == {}
    assert statsOf(state, b"f").finished[DEAD] == 0


def test_retryDeadRunsItAgainWithFreshAttempts() -> None:
    """
    C{retry dead HANDLE} queues the job again under its handle and unique,
    with its payload and fresh attempts; it leaves the dead set, in the
    store too, and can die again.
    """
    state, clock, store = storedState()
    handle = submitBackground(state, clock, unique=b"u1", payload=b"data")
    kill(state, clock, handle)
    assert admin(state, b"retry dead " + handle) == b"OK 1\n"
    assert len(state.dead) == 0 and store.dead == {}
    job = state.jobs[handle]
    assert (job.attempts, job.lastError, job.unique, job.payload) == (0, b"", b"u1", b"data")
    assert store.jobs[job.key].attempts == 0
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    assert grab(state, worker, wpeer) == (P.JOB_ASSIGN_UNIQ, [handle, b"f", b"u1", b"data"])
    state.workEnd(worker, P.WORK_FAIL, handle, handle)
    assert state.jobs[handle].attempts == 1  # a fresh count: one attempt left
    runAndEnd(state, clock, "fail", handle)
    assert [e.handle for e in state.dead.newest()] == [handle]


def test_retryDeadUnknownAndMistakes() -> None:
    state, clock, store = storedState()
    assert admin(state, b"retry dead H:t:99") == b"ERR UNKNOWN_JOB\r\n"
    assert admin(state, b"retry dead nothing") == b"ERR UNKNOWN_JOB\r\n"
    assert admin(state, b"retry dead function f") == b"OK 0\n"
    assert admin(state, b"retry alive H:t:1").startswith(b"ERR INVALID_ARGUMENTS")
    assert admin(state, b"retry dead").startswith(b"ERR INVALID_ARGUMENTS")
    assert admin(state, b"purge everything").startswith(b"ERR INVALID_ARGUMENTS")


def test_retryDeadWhoseUniqueIsTaken() -> None:
    """
    A dead job whose unique a live job of its function has meanwhile stays
    dead: C{ERR UNIQUE_IN_USE} for its handle, left out of a function's count.
    """
    state, clock, store = storedState()
    first = submitBackground(state, clock, unique=b"u1")
    kill(state, clock, first)
    second = submitBackground(state, clock, unique=b"u2")
    kill(state, clock, second)
    live = submitBackground(state, clock, unique=b"u1")
    assert live != first
    assert admin(state, b"retry dead " + first) == (
        b"ERR UNIQUE_IN_USE a+live+job+has+its+unique\r\n")
    assert admin(state, b"retry dead function f") == b"OK 1\n"
    assert [e.handle for e in state.dead.newest()] == [first]
    assert second in state.jobs


def test_retriedDeadJobReservesItsUniqueAtOnce() -> None:
    """A submission with the unique of a job on its way back attaches to it."""
    state, clock, store = storedState()
    handle = submitBackground(state, clock, unique=b"u1")
    kill(state, clock, handle)
    assert admin(state, b"retry dead function f") == b"OK 1\n"
    assert submitBackground(state, clock, unique=b"u1") == handle


def test_purgeDead() -> None:
    state, clock, store = storedState()
    state.policies.set(b"*", "attempts:1")
    handles = []
    for name in (b"f", b"g", b"f"):
        handles.append(submitBackground(state, clock, function=name))
        failIn(state, name, handles[-1])
    assert admin(state, b"purge dead f") == b"OK 2\n"
    assert [e.handle for e in state.dead.newest()] == [handles[1]]
    assert list(store.dead) == [2]
    assert admin(state, b"purge dead") == b"OK 1\n"
    assert store.dead == {} and len(state.dead) == 0
    assert admin(state, b"retry dead " + handles[1]) == b"ERR UNKNOWN_JOB\r\n"


def test_sizeLimitDropsTheOldest() -> None:
    jobs: Dict[int, StoredJob] = {}
    dead: Dict[int, DeadJob] = {}
    clock = Clock()
    clock.advance(START)
    from txgear.server._policy import PolicyTable
    from txgear.server._state import JobServerState
    table = PolicyTable()
    table.set(b"*", "attempts:1,on:fail")
    state = JobServerState(clock=clock, handlePrefix=b"H:t", policies=table,
                           store=MemoryJobStore(jobs, dead), deadMaxJobs=2)
    handles = [submitBackground(state, clock) for _ in range(3)]
    with capturedLogs() as logs:
        for handle in handles:
            clock.advance(1)
            runAndEnd(state, clock, "fail", handle)
    assert [e.handle for e in state.dead.newest()] == handles[:0:-1]
    assert sorted(dead) == [2, 3]
    assert state.dead.droppedBySize == 1
    assert any("Dead set over" in (event.get("log_format") or "") for event in logs)


def test_ageLimitDropsOldJobsOnItsTimer() -> None:
    state, clock, store = storedState("attempts:1,on:fail")
    state.dead.maxAge = 60.0
    old = submitBackground(state, clock)
    runAndEnd(state, clock, "fail", old)
    clock.advance(30)
    young = submitBackground(state, clock)
    runAndEnd(state, clock, "fail", young)
    clock.advance(29.999)
    assert len(state.dead) == 2
    with capturedLogs() as logs:
        clock.advance(0.001)
    assert [e.handle for e in state.dead.newest()] == [young]
    assert list(store.dead) == [2]
    assert state.dead.droppedByAge == 1
    assert any("older than" in (event.get("log_format") or "") for event in logs)
    clock.advance(30)
    assert len(state.dead) == 0 and store.dead == {}
    assert clock.getDelayedCalls() == []


def test_showDeadByteForByteWithHostileValues() -> None:
    """
    C{show dead [FUNCTION]}: newest first, one escaped line per job, DIED-AT
    in ISO 8601 UTC; a function, unique or error holding tabs, newlines or
    backslashes cannot forge a line or a field.
    """
    state, clock, store = storedState("attempts:1,on:fail+exception")
    evil = b"ev\til\n.\n"
    first = submitBackground(state, clock, function=evil, unique=b"u\\1\r")
    session, peer = connect(state)
    state.canDo(session, evil)
    grab(state, session, peer)
    state.workEnd(session, P.WORK_EXCEPTION, first,
                  first + b"\0line\nH:t:9\tf\tu\t1\t2026\tforged\x00\x7f")
    clock.advance(1.5)
    second = submitBackground(state, clock, function=b"g")
    failIn(state, b"g", second)
    expected = (b"H:t:2\tg\t\t1\t2023-11-14T22:13:21.500Z\tWORK_FAIL\n"
                b"H:t:1\tev\\x09il\\x0a.\\x0a\tu\\x5c1\\x0d\t1\t2023-11-14T22:13:20.000Z\t"
                b"line\\x0aH:t:9\\x09f\\x09u\\x091\\x092026\\x09forged\\x00\\x7f\n.\n")
    assert admin(state, b"show dead") == expected
    assert admin(state, b"SHOW DEAD g") == expected.split(b"\n")[0] + b"\n.\n"
    assert admin(state, b"show dead nothing") == b".\n"


def test_deadSetReloadedAtStart() -> None:
    """
    A new state on the same store (a restart) indexes the dead set, and its
    job keys continue after the dead ones: a retried dead job keeps a
    handle no new job has.
    """
    jobs: Dict[int, StoredJob] = {}
    dead: Dict[int, DeadJob] = {}
    state, clock = makeState("attempts:1,on:fail", store=MemoryJobStore(jobs, dead))
    handle = submitBackground(state, clock, unique=b"u1")
    runAndEnd(state, clock, "fail", handle)
    before = admin(state, b"show dead")
    later = Clock()
    later.advance(clock.seconds() + 10)
    restarted, _ = makeState("attempts:1,on:fail", store=MemoryJobStore(jobs, dead), clock=later)
    restarted.loadStored(restarted.store.open().result)
    assert restarted.loadDead(restarted.store.listDead().result) == 1
    assert admin(restarted, b"show dead") == before
    assert submitBackground(restarted, later) == b"H:t:2"
    assert admin(restarted, b"retry dead " + handle) == b"OK 1\n"
    assert restarted.jobs[handle].unique == b"u1"


def test_retryRefusedByTheStoreLeavesItDead() -> None:
    """A store that cannot take the job back: it stays dead, in the index too."""
    from twisted.internet.defer import fail
    state, clock, store = storedState()
    handle = submitBackground(state, clock)
    kill(state, clock, handle)
    store.retryDead = lambda keys: fail(RuntimeError("disk on fire"))  # type: ignore[method-assign]
    with capturedLogs() as logs:
        assert admin(state, b"retry dead " + handle) == b"OK 1\n"
    assert [e.handle for e in state.dead.newest()] == [handle]
    assert handle not in state.jobs
    assert any(event.get("log_failure") is not None for event in logs)


def test_retryWithoutAStoreKeepsNothingBehind() -> None:
    """
    With C{--queue memory} the dead set has a memory store of its own: a
    retried job runs from memory and leaves nothing in that store.
    """
    state, clock = makeState("attempts:1,on:fail")
    handle = submitBackground(state, clock, unique=b"u1", payload=b"p")
    runAndEnd(state, clock, "fail", handle)
    assert admin(state, b"retry dead " + handle) == b"OK 1\n"
    assert state.dead.store.jobs == {} and state.dead.store.dead == {}
    worker, wpeer = connect(state)
    state.canDo(worker, b"f")
    assert grab(state, worker, wpeer) == (P.JOB_ASSIGN_UNIQ, [handle, b"f", b"u1", b"p"])
    state.workEnd(worker, P.WORK_COMPLETE, handle, handle + b"\0done")
    assert state.jobs == {} and len(state.dead) == 0


def test_syncWithASharedDeadSetAddsItsJobsAndForgetsOnlyWhatWasIndexedWhenAsked() -> None:
    from txgear.server._deadset import DeadSet
    dead = DeadSet(MemoryJobStore(), Clock(), b"H:c:")
    dead.load([DeadJob(1, b"f", b"", b"p", diedAt=10), DeadJob(2, b"f", b"", b"p", diedAt=20)])
    issued = dead.keys()
    # Died here after the listing was issued: the listing cannot know it yet.
    dead.load([DeadJob(3, b"g", b"", b"p", diedAt=30)])
    # The store lists 1 (still dead), not 2 (retried elsewhere), and 4 (died elsewhere).
    added, forgotten = dead.sync([DeadJob(4, b"f", b"u", b"", attempts=3, diedAt=25),
                                  DeadJob(1, b"f", b"", b"p", diedAt=10)], issued)
    assert (added, forgotten) == (1, 1)
    assert [e.handle for e in dead.newest()] == [b"H:c:3", b"H:c:4", b"H:c:1"]
    assert dead.counts() == {b"f": 2, b"g": 1}
    assert dead.get(b"H:c:4").attempts == 3
