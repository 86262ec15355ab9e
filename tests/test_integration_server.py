"""
Loopback integration tests of the job server: the real plugin under
C{twistd -n gearman} (and once in-process), driven by real third-party peers
(the C{gearman} and C{gearadmin} tools, the C{gear} library) and by raw
sockets (L{tests._rawclient}).

Each test uses its own function names, so the module-scoped server's state
left by one test does not affect another.
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from typing import Any, Iterator, List

import pytest

from tests._peers import requirePeer, requireProgram, txgearProcess, txgearServer
from tests._rawclient import (
    RawClient, ToolProcess, adminOnce, listing, runTool, statusOf, waitFor,
)
from txgear._packet import PacketType as P

try:
    import gear
except ImportError:  # pragma: no cover
    gear = None

_names = itertools.count(1)


def fname(label: str) -> bytes:
    """A function name no other test uses."""
    return b"%s-%d-%d" % (label.encode(), os.getpid(), next(_names))


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """One txgear server process for the module."""
    yield from txgearServer()


def gearmanTool() -> str:
    return requireProgram("gearman")


def requireGear() -> None:
    requirePeer(gear is not None, "the gear library (pip install gear)")


# -- gear helpers: the library uses threads; every wait here is bounded ---------


def gearClient(port: int, name: str = "itest-client") -> Any:
    client = gear.Client(name)
    client.addServer("127.0.0.1", port)
    client.waitForServer(timeout=5)
    return client


def gearWorker(port: int, name: str, *functions: str) -> Any:
    worker = gear.Worker(name)
    worker.addServer("127.0.0.1", port)
    worker.waitForServer(timeout=5)
    for function in functions:
        worker.registerFunction(function)
    return worker


def gearGetJob(worker: Any, timeout: float = 5.0) -> Any:
    """C{worker.getJob()}, which blocks forever, bounded by C{timeout}."""
    box: List[Any] = []
    thread = threading.Thread(target=lambda: box.append(_tryGetJob(worker)), daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stopWaitingForJobs()
        thread.join(5)
        raise AssertionError(f"gear worker got no job within {timeout}s")
    result = box[0]
    if isinstance(result, Exception):
        raise result
    return result


def _tryGetJob(worker: Any) -> Any:
    try:
        return worker.getJob()
    except Exception as e:  # InterruptedError on stopWaitingForJobs
        return e


def gearWaitDone(job: Any, timeout: float = 5.0) -> None:
    waitFor(lambda: job.complete, timeout, what=f"gear job {job.name} to complete")


# -- foreground / background / priorities with the gearman tool ------------------


def test_foregroundRoundTripGearmanTool(server: Any) -> None:
    """
    A C{gearman -w} worker running C{rev} and a C{gearman} client: the client
    prints the reversed workload, and the job is gone afterwards.
    """
    tool = gearmanTool()
    f = fname("rev")
    with ToolProcess([tool, "-p", str(server.port), "-f", f.decode(), "-w", "--", "rev"]) as worker:
        waitFor(lambda: (statusOf(server.port, f) or (0, 0, 0))[2] == 1, what="worker registered")
        result = runTool([tool, "-p", str(server.port), "-f", f.decode(), "hello world"])
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"dlrow olleh"
        assert statusOf(server.port, f) == (0, 0, 1)
        assert worker.process.poll() is None


def test_backgroundJobWorkerArrivesLater(server: Any, tmp_path: Any) -> None:
    """
    C{gearman -b} queues a job while no worker exists; a worker started
    later runs it (C{-c 1}: exits after one job).
    """
    tool = gearmanTool()
    f = fname("bg")
    out = tmp_path / "out"
    result = runTool([tool, "-p", str(server.port), "-b", "-f", f.decode(), "late payload"])
    assert result.returncode == 0, result.stderr
    assert statusOf(server.port, f) == (1, 0, 0)
    prio = [l for l in listing(adminOnce(server.port, "prioritystatus")) if l.startswith(f + b"\t")]
    assert prio == [f + b"\t0\t1\t0\t0"]
    with ToolProcess([tool, "-p", str(server.port), "-f", f.decode(), "-w", "-c", "1", "--",
                      "sh", "-c", f"cat > {out}"]) as worker:
        worker.communicate(timeout=10)
        assert worker.process.returncode == 0
    assert out.read_bytes() == b"late payload"
    # DIFFERENCE: an unused function is forgotten (gearmand lists it at 0 0 0 forever).
    waitFor(lambda: statusOf(server.port, f) is None, what="job gone, worker gone")


def test_prioritiesOrder(server: Any) -> None:
    """
    High, normal and low background jobs queued with no worker (C{gearman -b
    -I/-L}) are handed to one worker high -> normal -> low, FIFO within each.
    """
    tool = gearmanTool()
    f = fname("prio")
    order = [("low1", ["-L"]), ("norm1", []), ("high1", ["-I"]), ("low2", ["-L"]),
             ("norm2", []), ("high2", ["-I"])]
    for data, flags in order:
        r = runTool([tool, "-p", str(server.port), "-b", *flags, "-f", f.decode(), data])
        assert r.returncode == 0, r.stderr
    prio = [l for l in listing(adminOnce(server.port, "prioritystatus")) if l.startswith(f + b"\t")]
    assert prio == [f + b"\t2\t2\t2\t0"]
    with RawClient(server.port) as w:
        w.register(f)
        got = []
        for _ in range(6):
            handle, function, unique, payload = w.grab(P.GRAB_JOB_UNIQ)[1]
            assert function == f
            got.append(payload)
            w.send(P.WORK_COMPLETE, handle, b"")
        assert got == [b"high1", b"high2", b"norm1", b"norm2", b"low1", b"low2"]
        assert w.grab()[0] == P.NO_JOB


def test_prioritiesOrderGear(server: Any) -> None:
    """The same with the gear client's precedences and a gear worker."""
    requireGear()
    f = fname("gprio").decode()
    client = gearClient(server.port)
    worker = None
    try:
        for data, precedence in [("l", gear.PRECEDENCE_LOW), ("n", gear.PRECEDENCE_NORMAL),
                                 ("h", gear.PRECEDENCE_HIGH)]:
            client.submitJob(gear.Job(f, data.encode()), background=True,
                             precedence=precedence, timeout=5)
        worker = gearWorker(server.port, "gprio-worker", f)
        got = []
        for _ in range(3):
            job = gearGetJob(worker)
            got.append(job.arguments)
            job.sendWorkComplete(b"")
        assert got == [b"h", b"n", b"l"]
    finally:
        client.shutdown()
        if worker is not None:
            worker.shutdown()


# -- the gear library --------------------------------------------------------------


def test_gearForegroundRoundTrip(server: Any) -> None:
    """gear client and gear worker: data, status, then the result."""
    requireGear()
    f = fname("gear").decode()
    client = gearClient(server.port)
    worker = gearWorker(server.port, "gear-worker-1", f)
    try:
        job = gear.Job(f, b"ping\0pong")
        client.submitJob(job, timeout=5)
        assert job.handle
        wjob = gearGetJob(worker)
        assert wjob.arguments == b"ping\0pong"
        assert wjob.handle == job.handle
        wjob.sendWorkData(b"part\0one")
        wjob.sendWorkStatus(1, 2)
        wjob.sendWorkComplete(b"done\0!")
        gearWaitDone(job)
        assert not job.failure
        assert job.data == [b"part\0one", b"done\0!"]
        assert (job.numerator, job.denominator) == (b"1", b"2")
    finally:
        client.shutdown()
        worker.shutdown()


def test_gearBackgroundWorkerLater(server: Any) -> None:
    """A gear background submission runs on a gear worker that connects later."""
    requireGear()
    f = fname("gearbg").decode()
    client = gearClient(server.port)
    try:
        job = gear.Job(f, b"later", unique="bg-unique-1")
        client.submitJob(job, background=True, timeout=5)
        assert job.handle
        assert statusOf(server.port, f.encode()) == (1, 0, 0)
        worker = gearWorker(server.port, "gear-late", f)
        try:
            wjob = gearGetJob(worker)
            assert (wjob.arguments, wjob.unique, wjob.handle) == (b"later", b"bg-unique-1", job.handle)
            wjob.sendWorkComplete(b"")
            waitFor(lambda: statusOf(server.port, f.encode()) == (0, 0, 1), what="job done")
        finally:
            worker.shutdown()
    finally:
        client.shutdown()


def test_gearExceptionDataWarningForwarding(server: Any) -> None:
    """
    A gear client that set the C{exceptions} option receives WORK_DATA,
    WORK_WARNING and then the WORK_EXCEPTION payload.
    """
    requireGear()
    f = fname("gearexc").decode()
    client = gearClient(server.port)
    worker = gearWorker(server.port, "gear-exc", f)
    try:
        assert client.setOption("exceptions", timeout=5)
        job = gear.Job(f, b"x")
        client.submitJob(job, timeout=5)
        wjob = gearGetJob(worker)
        wjob.sendWorkData(b"d1")
        wjob.sendWorkWarning(b"w1")
        wjob.sendWorkException(b"Traceback\0boom")
        waitFor(lambda: job.exception is not None, what="the exception")
        assert job.exception == b"Traceback\0boom"
        assert job.warning
        assert job.data[:2] == [b"d1", b"w1"]
    finally:
        client.shutdown()
        worker.shutdown()


def test_uniqueCoalescingTwoClients(server: Any) -> None:
    """
    Two C{gearman} clients submit the same function and unique: one job,
    both wait on it, one execution, both print the result.
    """
    tool = gearmanTool()
    f = fname("uniq")
    argv = [tool, "-p", str(server.port), "-f", f.decode(), "-u", "same-unique", "payload"]
    with RawClient(server.port) as w, ToolProcess(argv) as c1, ToolProcess(argv) as c2:
        w.register(f)
        with RawClient(server.port) as probe:
            def twoWaiting() -> bool:
                probe.send(P.GET_STATUS_UNIQUE, b"same-unique")
                return probe.expect(P.STATUS_RES_UNIQUE)[5] == b"2"
            waitFor(twoWaiting, what="both clients attached")
        assert statusOf(server.port, f) == (1, 0, 1)
        assert listing(adminOnce(server.port, "show unique jobs")).count(b"same-unique") == 1
        kind, (handle, function, unique, payload) = w.grab(P.GRAB_JOB_UNIQ)
        assert (kind, unique, payload) == (P.JOB_ASSIGN_UNIQ, b"same-unique", b"payload")
        w.send(P.WORK_COMPLETE, handle, b"the result")
        assert c1.communicate()[0] == b"the result"
        assert c2.communicate()[0] == b"the result"
        assert w.grab()[0] == P.NO_JOB


def test_uniqueCoalescingSameHandle(server: Any) -> None:
    """Raw and gear clients: the coalesced submissions get the same handle."""
    requireGear()
    f = fname("uniqh")
    client = gearClient(server.port)
    try:
        with RawClient(server.port) as c1, RawClient(server.port) as w:
            h1 = c1.submit(f, b"p", b"u-42")
            job = gear.Job(f.decode(), b"p", unique="u-42")
            client.submitJob(job, timeout=5)
            assert job.handle == h1
            # a different function with the same unique is another job
            assert c1.submit(fname("other"), b"p", b"u-42", P.SUBMIT_JOB_BG) != h1
            w.register(f)
            handle = w.grab()[1][0]
            assert handle == h1
            w.send(P.WORK_COMPLETE, h1, b"r")
            assert c1.expect(P.WORK_COMPLETE) == [h1, b"r"]
            gearWaitDone(job)
            assert job.data == [b"r"]
            # the unique is free again: a new job, a new handle
            assert c1.submit(f, b"p", b"u-42", P.SUBMIT_JOB_BG) != h1
    finally:
        client.shutdown()


# -- status, forwarding ------------------------------------------------------------


def test_statusPolling(server: Any) -> None:
    """
    GET_STATUS and GET_STATUS_UNIQUE while a raw worker holds the job and
    reports WORK_STATUS; and for unknown jobs.
    """
    f = fname("status")
    with RawClient(server.port) as c, RawClient(server.port) as w, RawClient(server.port) as fg:
        handle = c.submit(f, b"w", b"st-u1", P.SUBMIT_JOB_BG)
        assert c.call(P.GET_STATUS, handle, reply=P.STATUS_RES) == [handle, b"1", b"0", b"0", b"0"]
        assert fg.submit(f, b"w", b"st-u1") == handle  # a foreground client attaches
        w.register(f)
        assert w.grab()[1][0] == handle
        assert c.call(P.GET_STATUS, handle, reply=P.STATUS_RES) == [handle, b"1", b"1", b"0", b"0"]
        w.send(P.WORK_STATUS, handle, b"3", b"10")
        assert fg.expect(P.WORK_STATUS) == [handle, b"3", b"10"]
        assert c.call(P.GET_STATUS, handle, reply=P.STATUS_RES) == [handle, b"1", b"1", b"3", b"10"]
        assert c.call(P.GET_STATUS_UNIQUE, b"st-u1", reply=P.STATUS_RES_UNIQUE) == \
            [b"st-u1", b"1", b"1", b"3", b"10", b"1"]
        w.send(P.WORK_COMPLETE, handle, b"")
        assert fg.expect(P.WORK_COMPLETE) == [handle, b""]
        assert c.call(P.GET_STATUS, handle, reply=P.STATUS_RES) == [handle, b"0", b"0", b"0", b"0"]
        assert c.call(P.GET_STATUS_UNIQUE, b"st-u1", reply=P.STATUS_RES_UNIQUE) == \
            [b"st-u1", b"0", b"0", b"0", b"0", b"0"]
        c.recvNothing(0.1)


def test_workDataWarningExceptionForwarding(server: Any) -> None:
    """
    WORK_DATA / WORK_WARNING / WORK_STATUS go to every attached client as the
    worker sent them; WORK_EXCEPTION goes to the client that sent OPTION_REQ
    exceptions, and the other gets WORK_FAIL (bare handle: gearmand adds a
    stray NUL there, txgear deliberately does not).
    """
    f = fname("fwd")
    with RawClient(server.port) as a, RawClient(server.port) as b, RawClient(server.port) as w:
        assert a.call(P.OPTION_REQ, b"exceptions", reply=P.OPTION_RES) == [b"exceptions"]
        h = a.submit(f, b"job", b"fwd-u")
        assert b.submit(f, b"job", b"fwd-u") == h
        w.register(f)
        assert w.grab(P.GRAB_JOB)[1] == [h, f, b"job"]
        w.send(P.WORK_DATA, h, b"chunk\0with nul")
        w.send(P.WORK_WARNING, h, b"careful")
        w.send(P.WORK_STATUS, h, b"1", b"2")
        w.send(P.WORK_EXCEPTION, h, b"ValueError\0details")
        for client in (a, b):
            assert client.recvAll(3) == [(P.WORK_DATA, [h, b"chunk\0with nul"]),
                                         (P.WORK_WARNING, [h, b"careful"]),
                                         (P.WORK_STATUS, [h, b"1", b"2"])]
        assert a.expect(P.WORK_EXCEPTION) == [h, b"ValueError\0details"]
        assert b.expect(P.WORK_FAIL) == [h]  # exactly the handle: no trailing NUL
        # the exception ended the job (as gearmand)
        w.send(P.WORK_COMPLETE, h, b"late")
        assert w.expect(P.ERROR) == [b"JOB_NOT_FOUND", b"Job given in work result not found"]
        a.recvNothing(0.1)


def test_workFailForwarding(server: Any) -> None:
    """WORK_FAIL reaches the client; foreground HIGH runs before LOW."""
    f = fname("fail")
    with RawClient(server.port) as c, RawClient(server.port) as w:
        low = c.submit(f, b"x", kind=P.SUBMIT_JOB_LOW)
        high = c.submit(f, b"y", kind=P.SUBMIT_JOB_HIGH)
        w.register(f)
        assert w.grab()[1][0] == high
        assert w.grab()[1][0] == low
        w.send(P.WORK_FAIL, low)
        assert c.expect(P.WORK_FAIL) == [low]
        w.send(P.WORK_COMPLETE, high, b"")
        assert c.expect(P.WORK_COMPLETE) == [high, b""]


# -- losing workers ------------------------------------------------------------------


def test_workerKilledMidJobCompletesElsewhere(server: Any) -> None:
    """
    SIGKILL a C{gearman -w} worker while it runs a job: the job is requeued
    (the client is not told) and completes on another worker; C{show jobs}
    counts the retry.
    """
    tool = gearmanTool()
    f = fname("kill")
    port = str(server.port)
    with ToolProcess([tool, "-p", port, "-f", f.decode(), "-w", "--", "sleep", "30"]) as slow, \
            ToolProcess([tool, "-p", port, "-f", f.decode(), "survive me"]) as client:
        waitFor(lambda: statusOf(server.port, f) == (1, 1, 1), what="the slow worker running the job")
        slow.kill()
        waitFor(lambda: statusOf(server.port, f) == (1, 0, 0), what="the job requeued")
        jobs = listing(adminOnce(server.port, "show jobs"))
        assert any(line.split(b"\t")[1:] == [b"1", b"0", b"0"] for line in jobs), jobs
        with ToolProcess([tool, "-p", port, "-f", f.decode(), "-w", "-c", "1", "--", "rev"]) as good:
            out, err = client.communicate(timeout=10)
            assert out == b"em evivrus", err
            good.communicate(timeout=10)
    waitFor(lambda: statusOf(server.port, f) is None, what="the unused function forgotten")


def test_rawWorkerDisconnectRequeues(server: Any) -> None:
    """Closing a raw worker's socket mid-job requeues it at the tail, status reset."""
    f = fname("drop")
    with RawClient(server.port) as c, RawClient(server.port) as w2:
        h1 = c.submit(f, b"first")
        w1 = RawClient(server.port)
        w1.register(f)
        assert w1.grab()[1][0] == h1
        w1.send(P.WORK_STATUS, h1, b"5", b"9")
        assert c.expect(P.WORK_STATUS) == [h1, b"5", b"9"]
        h2 = c.submit(f, b"second")
        w1.close()
        waitFor(lambda: statusOf(server.port, f) == (2, 0, 0), what="requeue")
        assert c.call(P.GET_STATUS, h1, reply=P.STATUS_RES) == [h1, b"1", b"0", b"0", b"0"]
        w2.register(f)
        # requeued at the tail: the later job first
        assert w2.grab()[1][0] == h2
        assert w2.grab()[1][0] == h1
        w2.send(P.WORK_COMPLETE, h1, b"ok1")
        w2.send(P.WORK_COMPLETE, h2, b"ok2")
        assert sorted(c.recvAll(2)) == sorted([(P.WORK_COMPLETE, [h1, b"ok1"]),
                                               (P.WORK_COMPLETE, [h2, b"ok2"])])


def test_canDoTimeoutFailsTheJob(server: Any) -> None:
    """
    CAN_DO_TIMEOUT (milliseconds, at least 1000 as in gearmand): a job held
    longer fails to its client with WORK_FAIL (C{--job-retries 0}); the slow
    worker's late result is dropped without an ERROR.
    """
    f = fname("timeout")
    with RawClient(server.port) as c, RawClient(server.port) as slow:
        slow.send(P.CAN_DO_TIMEOUT, f, b"300")  # raised to 1000 ms
        slow.echo()
        h = c.submit(f, b"t")
        started = time.monotonic()
        assert slow.grab()[1][0] == h
        assert c.expect(P.WORK_FAIL, timeout=5) == [h]
        assert time.monotonic() - started >= 0.9
        slow.send(P.WORK_COMPLETE, h, b"too late")
        slow.send(P.ECHO_REQ, b"after")
        assert slow.recv() == (P.ECHO_RES, [b"after"])
        assert statusOf(server.port, f) == (0, 0, 1)


def test_commandWorkerOverrunningItsTimeoutFailsTheForegroundJob(server: Any) -> None:
    """
    The issue's case: C{txgear-worker -t 1} running C{sleep 3; cat}, then a
    foreground submit. The client gets WORK_FAIL about a second later
    instead of waiting while the job is requeued forever.
    """
    import sys

    f = fname("overrun")
    argv = [sys.executable, "-m", "txgear._cli", "worker", "-s", f"127.0.0.1:{server.port}",
            "-f", f.decode(), "-t", "1", "--", "sh", "-c", "sleep 3; cat"]
    with ToolProcess(argv), RawClient(server.port) as c:
        waitFor(lambda: (statusOf(server.port, f) or (0, 0, 0))[2] == 1, timeout=15,
                what="the worker registered")
        started = time.monotonic()
        h = c.submit(f, b"payload")
        assert c.expect(P.WORK_FAIL, timeout=6) == [h]
        assert 0.9 <= time.monotonic() - started < 3
        assert statusOf(server.port, f) == (0, 0, 1)


def test_hungWokenWorkerDoesNotStrandTheJob(server: Any) -> None:
    """
    C{--worker-wakeup 1}: the only NOOP goes to the oldest sleeper, a worker
    that never grabs (hung, or a forked child's socket kept by its parent);
    shortly after, the next sleeper is woken and runs the job.
    """
    f = fname("hung")
    with RawClient(server.port) as hung, RawClient(server.port) as healthy, \
            RawClient(server.port) as c:
        for worker in (hung, healthy):
            worker.register(f)
            worker.send(P.PRE_SLEEP)
            worker.echo()
        h = c.submit(f, b"x")
        assert healthy.recv(timeout=5) == (P.NOOP, [])
        assert healthy.grab()[1][0] == h
        healthy.send(P.WORK_COMPLETE, h, b"done")
        assert c.expect(P.WORK_COMPLETE) == [h, b"done"]
        assert hung.recv() == (P.NOOP, [])


def test_jobRetries() -> None:
    """
    C{--job-retries 2}: the second worker loss fails the job (WORK_FAIL to
    its client) instead of requeueing it.
    """
    proc = txgearProcess(extra=["--job-retries", "2"])
    proc.start()
    try:
        f = b"retry"
        with RawClient(proc.port) as c:
            h = c.submit(f, b"x")
            for attempt in range(2):
                w = RawClient(proc.port)
                w.register(f)
                kind, args = w.grab()
                assert (kind, args[0]) == (P.JOB_ASSIGN_UNIQ, h), attempt
                w.close()
                if attempt == 0:
                    waitFor(lambda: statusOf(proc.port, f) == (1, 0, 0), what="requeue")
            assert c.expect(P.WORK_FAIL) == [h]
            assert statusOf(proc.port, f) is None  # unused: forgotten
            # A CAN_DO_TIMEOUT expiry counts as an attempt: requeued once, then done elsewhere.
            with RawClient(proc.port) as slow, RawClient(proc.port) as good:
                slow.send(P.CAN_DO_TIMEOUT, f, b"1000")
                slow.echo()
                h = c.submit(f, b"y")
                assert slow.grab()[1][0] == h
                waitFor(lambda: statusOf(proc.port, f) == (1, 0, 1), what="timeout requeue")
                slow.send(P.WORK_COMPLETE, h, b"too late")
                good.register(f)
                assert good.grab()[1][0] == h
                good.send(P.WORK_COMPLETE, h, b"in time")
                assert c.expect(P.WORK_COMPLETE) == [h, b"in time"]
    finally:
        proc.stop()


# -- other packets -------------------------------------------------------------------


def test_submitJobEpochWakesSleeper(server: Any) -> None:
    """
    SUBMIT_JOB_EPOCH 2 s ahead: not grabbable before, and a sleeping worker
    gets a NOOP when it is due (txgear has a timer; gearmand 1.1.20 does not).
    """
    f = fname("epoch")
    with RawClient(server.port) as c, RawClient(server.port) as w, RawClient(server.port) as poll:
        w.register(f)
        assert w.grab()[0] == P.NO_JOB
        w.send(P.PRE_SLEEP)
        due = int(time.time()) + 2
        h = c.call(P.SUBMIT_JOB_EPOCH, f, b"ep-u", b"%d" % due, b"later",
                   reply=P.JOB_CREATED)[0]
        poll.register(f)
        assert poll.grab()[0] == P.NO_JOB
        assert statusOf(server.port, f) == (1, 0, 2)
        assert w.expect(P.NOOP, timeout=5) == []
        assert time.time() >= due - 0.05
        assert w.grab()[1] == [h, f, b"ep-u", b"later"]
        w.send(P.WORK_COMPLETE, h, b"")
        c.recvNothing(0.1)  # background: nothing relayed


def test_reduceJobsAndGrabVariants(server: Any) -> None:
    """
    SUBMIT_REDUCE_JOB(_BACKGROUND) with GRAB_JOB_ALL give JOB_ASSIGN_ALL
    (no aggregator field); a plain job via GRAB_JOB_ALL gives JOB_ASSIGN_UNIQ;
    GRAB_JOB gives JOB_ASSIGN.
    """
    f = fname("reduce")
    with RawClient(server.port) as c, RawClient(server.port) as w:
        h1 = c.call(P.SUBMIT_REDUCE_JOB, f, b"r-u1", b"myreducer", b"", b"map\0data",
                    reply=P.JOB_CREATED)[0]
        h2 = c.call(P.SUBMIT_REDUCE_JOB_BACKGROUND, f, b"r-u2", b"red2", b"agg", b"bg",
                    reply=P.JOB_CREATED)[0]
        h3 = c.submit(f, b"plain", b"r-u3")
        h4 = c.submit(f, b"plain4", b"r-u4", P.SUBMIT_JOB_HIGH_BG)
        w.register(f)
        assert w.grab(P.GRAB_JOB_ALL) == (P.JOB_ASSIGN_UNIQ, [h4, f, b"r-u4", b"plain4"])
        assert w.grab(P.GRAB_JOB_ALL) == (P.JOB_ASSIGN_ALL, [h1, f, b"r-u1", b"myreducer", b"map\0data"])
        assert w.grab(P.GRAB_JOB_ALL) == (P.JOB_ASSIGN_ALL, [h2, f, b"r-u2", b"red2", b"bg"])
        assert w.grab(P.GRAB_JOB) == (P.JOB_ASSIGN, [h3, f, b"plain"])
        assert w.grab(P.GRAB_JOB_ALL) == (P.NO_JOB, [])
        for h in (h1, h2, h3, h4):
            w.send(P.WORK_COMPLETE, h, b"r")
        assert sorted(c.recvAll(2)) == sorted([(P.WORK_COMPLETE, [h1, b"r"]),
                                               (P.WORK_COMPLETE, [h3, b"r"])])


def test_echoOptionReqAndErrors(server: Any) -> None:
    """ECHO keeps NULs; OPTION_REQ echoes the name as sent; unknown options fail."""
    with RawClient(server.port) as c:
        data = b"\0a\0b\0" + bytes(range(256))
        assert c.call(P.ECHO_REQ, data, reply=P.ECHO_RES) == [data]
        assert c.call(P.ECHO_REQ, b"", reply=P.ECHO_RES) == [b""]
        assert c.call(P.OPTION_REQ, b"EXCEPTIONS", reply=P.OPTION_RES) == [b"EXCEPTIONS"]
        assert c.call(P.OPTION_REQ, b"nosuch", reply=P.ERROR) == \
            [b"UNKNOWN_OPTION", b"Server does not recognize given option"]
        assert c.call(P.ECHO_REQ, b"still open", reply=P.ECHO_RES) == [b"still open"]


def test_workerRegistrationPackets(server: Any) -> None:
    """
    PRE_SLEEP then a submission: one NOOP; CANT_DO and RESET_ABILITIES
    unregister (GRAB gets NO_JOB); CAN_DO again brings the job back.
    """
    f, g = fname("reg"), fname("reg2")
    with RawClient(server.port) as c, RawClient(server.port) as w:
        w.register(f, g)
        w.send(P.PRE_SLEEP)
        w.echo()
        h = c.submit(f, b"1", kind=P.SUBMIT_JOB_BG)
        c.submit(f, b"2", kind=P.SUBMIT_JOB_BG)
        assert w.expect(P.NOOP) == []
        w.recvNothing(0.2)  # one NOOP per sleep
        w.send(P.CANT_DO, f)
        assert w.grab()[0] == P.NO_JOB
        assert statusOf(server.port, f) == (2, 0, 0)
        w.send(P.CAN_DO, f)
        w.send(P.RESET_ABILITIES)
        assert w.grab()[0] == P.NO_JOB
        w.send(P.CAN_DO, f)
        w.send(P.PRE_SLEEP)  # work is ready: an immediate NOOP
        assert w.expect(P.NOOP) == []
        assert w.grab()[1][0] == h


def test_setClientIdInWorkers(server: Any) -> None:
    """SET_CLIENT_ID (raw and gear's client_id) shows in the C{workers} listing."""
    f, g = fname("cid"), fname("cid2")
    with RawClient(server.port) as w:
        w.register(f, g, clientId=b"img-worker-7")
        lines = listing(adminOnce(server.port, "workers"))
        mine = [l for l in lines if b" img-worker-7 : " in l]
        assert len(mine) == 1
        fd, ip, cid, colon, *functions = mine[0].split(b" ")
        assert fd.isdigit() and ip == b"127.0.0.1" and colon == b":"
        assert sorted(functions) == sorted([f, g])  # order: test_listingsMatchGearmand
        # the admin connection itself is listed, with no functions
        assert any(l.endswith(b" - :") for l in lines)
    if gear is not None:
        h = gearWorker(server.port, "gear-cid-9", fname("cid3").decode())
        try:
            waitFor(lambda: any(b" gear-cid-9 : " in l
                                for l in listing(adminOnce(server.port, "workers"))),
                    what="gear worker listed")
        finally:
            h.shutdown()


def test_gearadminAgainstTxgear(server: Any) -> None:
    """gearadmin's read-only options work against txgear and print gearmand's formats."""
    tool = requireProgram("gearadmin")
    port = str(server.port)

    def run(*args: str) -> bytes:
        r = runTool([tool, "-p", port, *args])
        assert r.returncode == 0, r.stderr
        return r.stdout
    assert run("--getpid").strip() == str(server.pid).encode()
    assert run("--server-verbose") == b"INFO\n"
    assert run("--server-version").strip()
    assert run("--status").endswith(b".\n")


# -- stopping ----------------------------------------------------------------------


def test_gracefulStopSigusr1() -> None:
    """
    SIGUSR1: the server stops listening and refuses new jobs, lets the running
    job finish and deliver its result, then exits with status 0.
    """
    proc = txgearProcess()
    proc.start()
    try:
        with RawClient(proc.port) as c, RawClient(proc.port) as w:
            h = c.submit(b"g", b"x")
            w.register(b"g")
            assert w.grab()[1][0] == h
            os.kill(proc.pid, signal.SIGUSR1)

            def refused() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", proc.port), timeout=0.5).close()
                    return False
                except OSError:
                    return True
            waitFor(refused, what="the listener closed")
            assert c.call(P.SUBMIT_JOB, b"g", b"", b"new", reply=P.ERROR)[0] == b"QUEUE_ERROR"
            assert proc.process.poll() is None  # still running: a job is in progress
            w.send(P.WORK_COMPLETE, h, b"finished")
            assert c.expect(P.WORK_COMPLETE) == [h, b"finished"]
        assert proc.process.wait(10) == 0
    finally:
        proc.stop()


def test_shutdownGracefulCommand() -> None:
    """C{--enable-shutdown-command}: C{shutdown graceful} says OK and the process exits 0."""
    proc = txgearProcess(extra=["--enable-shutdown-command"])
    proc.start()
    try:
        with RawClient(proc.port) as a:
            assert a.admin("shutdown bogus") == b"ERR unknown_args Unknown+arguments+to+server+command\r\n"
            assert a.admin("shutdown graceful") == b"OK\n"
        assert proc.process.wait(10) == 0
    finally:
        proc.stop()


def test_shutdownCommandDisabledByDefault(server: Any) -> None:
    assert adminOnce(server.port, "shutdown") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    assert adminOnce(server.port, "shutdown graceful") == \
        b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    assert adminOnce(server.port, "version").startswith(b"OK ")


# -- in-process ----------------------------------------------------------------------


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as _reactor

    return _reactor


try:
    import pytest_twisted
except ImportError:  # pragma: no cover
    pytest_twisted = None


def _inProcess(f: Any) -> Any:
    if pytest_twisted is None:
        return pytest.mark.skip(reason="pytest-twisted is not installed")(f)
    return pytest_twisted.ensureDeferred(f)


@_inProcess
async def test_inProcessRoundTrip(reactor: Any) -> None:
    """
    L{GearmanServerService} in this process on the real reactor, with a
    Twisted client protocol doing a whole job round trip.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from txgear._packet import PacketDecoder, encodeRequest, splitArguments
    from txgear.server import GearmanServerService, JobServerState

    class Peer(Protocol):
        def connectionMade(self) -> None:
            self.decoder = PacketDecoder(expectRequests=False)
            self.waiting: List[Deferred] = []
            self.got: List[Any] = []

        def dataReceived(self, data: bytes) -> None:
            for kind, body in self.decoder.feed(data):
                self.got.append((kind, splitArguments(kind, body)))
            while self.got and self.waiting:
                self.waiting.pop(0).callback(self.got.pop(0))

        def send(self, kind: int, *args: bytes) -> None:
            self.transport.write(encodeRequest(kind, *args))

        def next(self) -> Deferred:
            """The next packet received (bounded by 5 s)."""
            d: Deferred = Deferred()
            self.waiting.append(d)
            self.dataReceived(b"")
            return d.addTimeout(5, reactor)

    service = GearmanServerService(["tcp:0:interface=127.0.0.1"], JobServerState(clock=reactor))
    service.startService()
    await service.started
    port = service.ports[0].getHost().port
    client = worker = None
    try:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        client = await connectProtocol(endpoint, Peer())
        worker = await connectProtocol(endpoint, Peer())
        worker.send(P.CAN_DO, b"inproc")
        client.send(P.SUBMIT_JOB, b"inproc", b"", b"abc")
        kind, (handle,) = await client.next()
        assert kind == P.JOB_CREATED
        worker.send(P.GRAB_JOB_UNIQ)
        assert await worker.next() == (P.JOB_ASSIGN_UNIQ, [handle, b"inproc", b"", b"abc"])
        worker.send(P.WORK_COMPLETE, handle, b"cba")
        assert await client.next() == (P.WORK_COMPLETE, [handle, b"cba"])
    finally:
        for peer in (client, worker):
            if peer is not None:
                peer.transport.loseConnection()
        await service.stopService()
    assert service.ports == []
