"""
Unit tests of L{txgear.worker}: connections in memory, a fake clock.
"""
from __future__ import annotations

from collections import deque

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from txgear._packet import PacketType as P
from txgear.errors import JobFailed
from txgear.worker import GearmanWorker, GearmanWorkerFactory, Job

from tests.test_client_fakes import FakeEndpoint, LoopTransport, res


def assign(handle: bytes, function: bytes = b"f", unique: bytes = b"", payload: bytes = b"x") -> bytes:
    return res(P.JOB_ASSIGN_UNIQ, handle, function, unique, payload)


def connect(factory: GearmanWorkerFactory):
    proto = factory.buildProtocol(None)
    transport = LoopTransport()
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


class ProtocolTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.factory = GearmanWorkerFactory(concurrency=1, clock=self.clock, clientId="w1")

    def test_registersAndGrabs(self):
        self.factory.register("f", lambda job: b"")
        self.factory.register(b"g", lambda job: b"", timeout=2.5)
        proto, t = connect(self.factory)
        self.assertEqual(t.packets(), [("SET_CLIENT_ID", [b"w1"]), ("CAN_DO", [b"f"]),
                                       ("CAN_DO_TIMEOUT", [b"g", b"2500"]), ("GRAB_JOB_UNIQ", [])])

    def test_noFunctionsNoGrab(self):
        proto, t = connect(self.factory)
        self.assertEqual(t.names(), ["SET_CLIENT_ID"])
        self.factory.register("f", lambda job: b"")
        self.assertEqual(t.names(), ["CAN_DO", "GRAB_JOB_UNIQ"])

    def test_sleepAndWake(self):
        self.factory.register("f", lambda job: b"")
        proto, t = connect(self.factory)
        t.clear()
        proto.dataReceived(res(P.NO_JOB))
        self.assertEqual(t.names(), ["PRE_SLEEP"])
        proto.dataReceived(res(P.NOOP))
        self.assertEqual(t.names(), ["GRAB_JOB_UNIQ"])
        # A second NOOP while a GRAB is outstanding sends nothing.
        proto.dataReceived(res(P.NOOP))
        self.assertEqual(t.names(), [])

    def test_runsJobAndGrabsAgain(self):
        seen = []

        def f(job):
            seen.append((job.function, job.handle, job.unique, job.payload))
            return job.payload[::-1]

        self.factory.register("f", f)
        proto, t = connect(self.factory)
        t.clear()
        proto.dataReceived(assign(b"H:1", b"f", b"u1", b"abc"))
        self.assertEqual(seen, [(b"f", b"H:1", b"u1", b"abc")])
        # The job finished at once: a GRAB for the slot, and one ahead.
        self.assertEqual(t.packets(), [("WORK_COMPLETE", [b"H:1", b"cba"]), ("GRAB_JOB_UNIQ", []),
                                       ("GRAB_JOB_UNIQ", [])])

    def test_assignSplitAcrossReads(self):
        self.factory.register("f", lambda job: job.payload.upper())
        proto, t = connect(self.factory)
        t.clear()
        data = assign(b"H:1", b"f", b"u", b"a\0b") + res(P.NO_JOB) + res(P.NO_JOB)
        for i in range(len(data)):
            proto.dataReceived(data[i:i + 1])
        # Two GRABs after a job that finished at once (one ahead); asleep
        # once both are answered.
        self.assertEqual(t.packets(), [("WORK_COMPLETE", [b"H:1", b"A\0B"]), ("GRAB_JOB_UNIQ", []),
                                       ("GRAB_JOB_UNIQ", []), ("PRE_SLEEP", [])])

    def test_plainAndAllAssign(self):
        got = []
        self.factory.register("f", lambda job: got.append((job.unique, job.reducer)))
        proto, t = connect(self.factory)
        proto.dataReceived(res(P.JOB_ASSIGN, b"H:1", b"f", b"x"))
        proto.dataReceived(res(P.JOB_ASSIGN_ALL, b"H:2", b"f", b"u", b"red", b"x"))
        self.assertEqual(got, [(b"", b""), (b"u", b"red")])

    def test_deferredJobWithUpdates(self):
        d = Deferred()
        jobs = []

        def f(job):
            jobs.append(job)
            return d

        self.factory.register("f", f)
        proto, t = connect(self.factory)
        proto.dataReceived(assign(b"H:1"))
        t.clear()
        job = jobs[0]
        job.sendStatus(1, 3)
        job.sendData(b"chunk")
        job.sendWarning("careful")
        d.callback("résumé")
        self.assertEqual(t.packets(), [
            ("WORK_STATUS", [b"H:1", b"1", b"3"]), ("WORK_DATA", [b"H:1", b"chunk"]),
            ("WORK_WARNING", [b"H:1", b"careful"]),
            ("WORK_COMPLETE", [b"H:1", "résumé".encode()]), ("GRAB_JOB_UNIQ", [])])
        # Updates after the end are dropped.
        job.sendData(b"late")
        self.assertEqual(t.value(), b"")

    def test_asyncFunction(self):
        gate = Deferred()

        async def f(job):
            await gate
            return b"async " + job.payload

        self.factory.register("f", f)
        proto, t = connect(self.factory)
        proto.dataReceived(assign(b"H:1", payload=b"ok"))
        t.clear()
        gate.callback(None)
        self.assertEqual(t.packets()[0], ("WORK_COMPLETE", [b"H:1", b"async ok"]))

    def test_failAndException(self):
        def f(job):
            if job.payload == b"fail":
                raise JobFailed("nope")
            raise ValueError("bad input")

        self.factory.concurrency = 5
        self.factory.register("f", f)
        proto, t = connect(self.factory)
        t.clear()
        with capturedLogs() as events:
            proto.dataReceived(assign(b"H:1", payload=b"fail") + assign(b"H:2", payload=b"boom"))
        packets = [p for p in t.packets() if p[0] != "GRAB_JOB_UNIQ"]
        self.assertEqual(packets, [("WORK_FAIL", [b"H:1"]),
                                   ("WORK_EXCEPTION", [b"H:2", b"ValueError: bad input"])])
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, ValueError)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_badReturnValue(self):
        self.factory.register("f", lambda job: 42)
        proto, t = connect(self.factory)
        t.clear()
        with capturedLogs():
            proto.dataReceived(assign(b"H:1"))
        name, args = t.packets()[0]
        self.assertEqual(name, "WORK_EXCEPTION")
        self.assertTrue(args[1].startswith(b"TypeError"))
        self.flushLoggedErrors(TypeError)

    def test_timeout(self):
        d = Deferred()
        self.factory.register("f", lambda job: d, timeout=3)
        proto, t = connect(self.factory)
        proto.dataReceived(assign(b"H:1"))
        t.clear()
        self.clock.advance(2.9)
        self.assertEqual(t.value(), b"")
        with capturedLogs():
            self.clock.advance(0.1)
        self.assertEqual(t.packets(), [("WORK_FAIL", [b"H:1"]), ("GRAB_JOB_UNIQ", [])])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timerCancelledOnCompletion(self):
        d = Deferred()
        self.factory.register("f", lambda job: d, timeout=3)
        proto, t = connect(self.factory)
        proto.dataReceived(assign(b"H:1"))
        d.callback(b"ok")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_grabFallback(self):
        self.factory.register("f", lambda job: b"")
        proto, t = connect(self.factory)
        t.clear()
        with capturedLogs():
            proto.dataReceived(res(P.ERROR, b"server_error", b"unknown command"))
            # An ECHO first tells whether the ERROR answered the GRAB.
            self.assertEqual(t.packets(), [("ECHO_REQ", [b"txgear: GRAB_JOB_UNIQ check"])])
            proto.dataReceived(res(P.ECHO_RES, b"txgear: GRAB_JOB_UNIQ check"))
        self.assertEqual(t.names(), ["GRAB_JOB"])
        proto.dataReceived(res(P.NO_JOB) + res(P.NOOP))
        self.assertEqual(t.names(), ["PRE_SLEEP", "GRAB_JOB"])

    def test_errorForAnotherPacketNeverMakesASecondGrab(self):
        # Issue 9 item 5: an ERROR that answers something else (here a
        # WORK_DATA an old server does not know) while GRAB_JOB_UNIQ is
        # outstanding must not send a second GRAB; its answer still comes.
        self.factory.register("f", lambda job: b"")
        proto, t = connect(self.factory)
        t.clear()
        with capturedLogs():
            proto.dataReceived(res(P.ERROR, b"server_error", b"no handler for WORK_DATA"))
        grabs = [n for n in t.names() if n.startswith("GRAB")]
        self.assertEqual(grabs, [])
        proto.dataReceived(res(P.NO_JOB))
        proto.dataReceived(res(P.ECHO_RES, b"txgear: GRAB_JOB_UNIQ check"))
        self.assertEqual(t.names(), ["PRE_SLEEP"])
        self.assertFalse(t.closed)
        proto.dataReceived(res(P.NOOP))
        self.assertEqual(t.names(), ["GRAB_JOB_UNIQ"])
        proto.dataReceived(assign(b"H:1"))
        self.assertFalse(t.closed)

    def test_lostConnectionDropsResult(self):
        d = Deferred()
        self.factory.register("f", lambda job: d)
        proto, t = connect(self.factory)
        proto.dataReceived(assign(b"H:1"))
        t.clear()
        with capturedLogs():
            t.drop()
            d.callback(b"late")
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.factory._busy, 0)


class ConcurrencyTests(SynchronousTestCase):
    def test_limitAcrossConnections(self):
        factory = GearmanWorkerFactory(concurrency=2, clock=Clock())
        gates = {}

        def f(job):
            gates[job.handle] = Deferred()
            return gates[job.handle]

        factory.register("f", f)
        (p1, t1), (p2, t2) = connect(factory), connect(factory)
        # Two slots: each connection has one GRAB outstanding.
        self.assertEqual(t1.names(), ["CAN_DO", "GRAB_JOB_UNIQ"])
        self.assertEqual(t2.names(), ["CAN_DO", "GRAB_JOB_UNIQ"])
        p1.dataReceived(assign(b"H:a1"))
        p2.dataReceived(assign(b"H:b1"))
        # Both slots busy: nobody grabs.
        self.assertEqual(t1.names() + t2.names(), [])
        self.assertEqual(len(factory.runningJobs()), 2)
        gates[b"H:a1"].callback(b"done")
        # p1 asked first, so it gets the free slot.
        self.assertEqual(t1.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])
        self.assertEqual(t2.names(), [])
        p1.dataReceived(res(P.NO_JOB))
        # p1 sleeps, its slot goes to p2.
        self.assertEqual(t1.names(), ["PRE_SLEEP"])
        self.assertEqual(t2.names(), ["GRAB_JOB_UNIQ"])
        p2.dataReceived(assign(b"H:b2"))
        self.assertEqual(factory._busy, 2)
        p1.dataReceived(res(P.NOOP))
        self.assertEqual(t1.names(), [])
        gates[b"H:b1"].callback(b"")
        # p2 queued for a slot (after its assignment) before p1 (woken): p2 first.
        self.assertEqual(t2.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])
        self.assertEqual(t1.names(), [])
        p2.dataReceived(res(P.NO_JOB))
        self.assertEqual(t1.names(), ["GRAB_JOB_UNIQ"])
        self.assertEqual(factory._busy, 2)

    def test_oneAtATime(self):
        factory = GearmanWorkerFactory(concurrency=1, clock=Clock())
        running = []
        gates = []

        def f(job):
            running.append(job.handle)
            gates.append(Deferred())
            return gates[-1]

        factory.register("f", f)
        p, t = connect(factory)
        p.dataReceived(assign(b"H:1"))
        t.clear()
        p.dataReceived(res(P.NOOP))
        self.assertEqual(t.value(), b"")
        gates[0].callback(b"")
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])


class GrabAheadTests(SynchronousTestCase):
    """
    While its jobs finish at once, a connection keeps a second GRAB
    outstanding behind the slot's: jobs then come two per read.
    """

    def setUp(self):
        self.clock = Clock()

    def connected(self, function, **kwargs):
        kwargs.setdefault("concurrency", 1)
        factory = GearmanWorkerFactory(clock=self.clock, **kwargs)
        factory.register("f", function)
        proto, t = connect(factory)
        self.assertEqual(t.names(), ["CAN_DO", "GRAB_JOB_UNIQ"])  # nothing ahead yet
        return factory, proto, t

    def test_twoJobsPerRead(self):
        ran = []

        def f(job):
            ran.append(job.handle)
            return job.payload

        factory, proto, t = self.connected(f)
        proto.dataReceived(assign(b"H:1"))
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ", "GRAB_JOB_UNIQ"])
        # Both GRABs answered in one read: both jobs run, one after the other,
        # and two GRABs are outstanding again.
        proto.dataReceived(assign(b"H:2") + assign(b"H:3"))
        self.assertEqual(ran, [b"H:1", b"H:2", b"H:3"])
        self.assertEqual(t.packets(), [("WORK_COMPLETE", [b"H:2", b"x"]), ("GRAB_JOB_UNIQ", []),
                                       ("WORK_COMPLETE", [b"H:3", b"x"]), ("GRAB_JOB_UNIQ", [])])
        self.assertEqual(factory._busy, 1)  # the slot's GRAB; the other is ahead
        # Asleep only once both are answered with NO_JOB.
        proto.dataReceived(res(P.NO_JOB))
        self.assertEqual(t.names(), [])
        proto.dataReceived(res(P.NO_JOB))
        self.assertEqual(t.names(), ["PRE_SLEEP"])
        self.assertEqual(factory._busy, 0)
        self.successResultOf(factory.whenIdle())
        proto.dataReceived(res(P.NOOP))
        self.assertEqual(t.names(), ["GRAB_JOB_UNIQ", "GRAB_JOB_UNIQ"])

    def test_jobAfterNoJob(self):
        factory, proto, t = self.connected(lambda job: b"r")
        proto.dataReceived(assign(b"H:1"))
        t.clear()
        # The slot's GRAB finds nothing, the one ahead a job: no sleep, and
        # the job runs in the slot.
        proto.dataReceived(res(P.NO_JOB) + assign(b"H:2"))
        self.assertEqual(t.packets(), [("WORK_COMPLETE", [b"H:2", b"r"]), ("GRAB_JOB_UNIQ", []),
                                       ("GRAB_JOB_UNIQ", [])])
        self.assertFalse(proto._sleeping)

    def test_notAfterAPendingDeferred(self):
        gates = []

        def f(job):
            gates.append(Deferred())
            return gates[-1]

        factory, proto, t = self.connected(f)
        proto.dataReceived(assign(b"H:1"))
        gates[0].callback(b"r")
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])

    def test_notAfterASlowJob(self):
        def f(job):
            self.clock.advance(0.01)
            return b"r"

        factory, proto, t = self.connected(f)
        proto.dataReceived(assign(b"H:1"))
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])

    def test_notWithTimeouts(self):
        factory, proto, t = self.connected(lambda job: b"r")
        factory.register("g", lambda job: b"r", timeout=5)
        t.clear()
        proto.dataReceived(assign(b"H:1"))
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])
        # Without it, the worker grabs ahead again.
        factory.unregister("g")
        t.clear()
        proto.dataReceived(assign(b"H:2"))
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ", "GRAB_JOB_UNIQ"])

    def test_turnedOff(self):
        factory, proto, t = self.connected(lambda job: b"r", grabAhead=False)
        proto.dataReceived(assign(b"H:1"))
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ"])

    def heldJob(self):
        """A job grabbed ahead arrives while the one before it still runs."""
        gates = {}
        ran = []

        def f(job):
            ran.append(job.handle)
            if job.payload == b"wait":
                gates[job.handle] = Deferred()
                return gates[job.handle]
            return b"r"

        factory, proto, t = self.connected(f)
        proto.dataReceived(assign(b"H:1"))
        proto.dataReceived(assign(b"H:2", payload=b"wait") + assign(b"H:3"))
        return factory, proto, t, gates, ran

    def test_heldJobWaitsForTheSlot(self):
        factory, proto, t, gates, ran = self.heldJob()
        # H:3 waits: concurrency 1, H:2 runs.
        self.assertEqual(ran, [b"H:1", b"H:2"])
        self.assertEqual(t.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ", "GRAB_JOB_UNIQ"])
        self.assertEqual(len(factory.runningJobs()), 1)
        proto.dataReceived(res(P.NOOP))
        self.assertEqual(t.names(), [])
        stopped = factory.whenIdle()
        self.assertNoResult(stopped)
        gates[b"H:2"].callback(b"done")
        # H:3 takes the slot H:2 frees, before anything else is grabbed.
        self.assertEqual(ran, [b"H:1", b"H:2", b"H:3"])
        self.assertEqual(t.packets(), [("WORK_COMPLETE", [b"H:2", b"done"]),
                                       ("WORK_COMPLETE", [b"H:3", b"r"]),
                                       ("GRAB_JOB_UNIQ", []), ("GRAB_JOB_UNIQ", [])])
        self.assertNoResult(stopped)
        proto.dataReceived(res(P.NO_JOB) + res(P.NO_JOB))
        self.successResultOf(stopped)

    def test_heldJobRunsDuringGracefulStop(self):
        factory, proto, t, gates, ran = self.heldJob()
        factory.stopGrabbing()
        idle = factory.whenIdle()
        t.clear()
        gates[b"H:2"].callback(b"done")
        self.assertEqual(t.names(), ["WORK_COMPLETE", "WORK_COMPLETE"])
        self.assertEqual(ran, [b"H:1", b"H:2", b"H:3"])
        self.successResultOf(idle)

    def test_heldJobDroppedWithItsConnection(self):
        factory, proto, t, gates, ran = self.heldJob()
        with capturedLogs():
            t.drop()
        self.assertEqual(factory._held, deque())
        self.assertEqual(factory._aheadCount, 0)
        gates[b"H:2"].callback(b"late")
        self.assertEqual(ran, [b"H:1", b"H:2"])
        self.assertEqual(factory._busy, 0)
        self.successResultOf(factory.whenIdle())

    def test_heldJobDroppedWhenAbandoned(self):
        factory, proto, t, gates, ran = self.heldJob()
        factory.stopGrabbing()
        with capturedLogs():
            factory.abandonRunning()
        self.assertEqual(ran, [b"H:1", b"H:2"])
        self.assertEqual(proto.jobs.keys(), {b"H:2"})

    def test_lostConnectionReleasesBothGrabs(self):
        factory, proto, t = self.connected(lambda job: b"r")
        proto.dataReceived(assign(b"H:1"))
        self.assertEqual((factory._busy, factory._aheadCount), (1, 1))
        t.drop()
        self.assertEqual((factory._busy, factory._aheadCount), (0, 0))
        self.successResultOf(factory.whenIdle())


class ServiceTests(SynchronousTestCase):
    def makeWorker(self, *modes, **kwargs):
        self.clock = Clock()
        self.endpoints = [FakeEndpoint(m, port=4730 + i) for i, m in enumerate(modes)]
        names = [f"127.0.0.1:{4730 + i}" for i in range(len(modes))]
        byName = dict(zip(names, self.endpoints))
        kwargs.setdefault("grace", 10)
        return GearmanWorker(names, reactor=self.clock, clock=self.clock,
                             retryPolicy=backoffPolicy(initialDelay=1.0, factor=2.0, jitter=lambda: 0),
                             endpointFor=lambda s: byName[s.name], **kwargs)

    def test_reregistersAfterReconnect(self):
        worker = self.makeWorker("accept")
        worker.register("f", lambda job: b"")
        worker.register("g", lambda job: b"", timeout=1)
        self.successResultOf(worker.connect())
        ep = self.endpoints[0]
        self.assertEqual(ep.transport.names(), ["CAN_DO", "CAN_DO_TIMEOUT", "GRAB_JOB_UNIQ"])
        ep.drop()
        self.assertEqual(worker.connectedServers(), [])
        self.clock.advance(2)
        self.assertEqual(ep.transport.names(), ["CAN_DO", "CAN_DO_TIMEOUT", "GRAB_JOB_UNIQ"])
        self.assertEqual(worker.factory._busy, 1)
        closing = worker.close()
        self.assertNoResult(closing)  # waits for the answer to the GRAB
        ep.feed(res(P.NO_JOB))
        self.successResultOf(closing)
        self.assertEqual(worker.factory._busy, 0)

    def test_keepsWorkingWithSurvivingServer(self):
        worker = self.makeWorker("accept", "accept")
        worker.register("f", lambda job: b"r")
        worker.startService()
        a, b = self.endpoints
        self.assertEqual(worker.factory._busy, 1)  # concurrency 1: one GRAB out
        first, second = (a, b) if a.transport.names()[-1:] == ["GRAB_JOB_UNIQ"] else (b, a)
        second.transport.clear()
        first.drop()
        # The slot the lost GRAB held goes to the other connection.
        self.assertEqual(second.transport.names(), ["GRAB_JOB_UNIQ"])
        second.feed(assign(b"H:1"))
        # Finished at once: the slot's GRAB and one ahead.
        self.assertEqual(second.transport.names(), ["WORK_COMPLETE", "GRAB_JOB_UNIQ", "GRAB_JOB_UNIQ"])
        second.feed(res(P.NO_JOB) + res(P.NO_JOB))
        self.successResultOf(worker.close())

    def test_gracefulStop(self):
        worker = self.makeWorker("accept")
        gate = Deferred()
        worker.register("f", lambda job: gate)
        self.successResultOf(worker.connect())
        ep = self.endpoints[0]
        ep.feed(assign(b"H:1"))
        ep.transport.clear()
        stopped = worker.stopService()
        self.assertNoResult(stopped)
        ep.feed(res(P.NOOP))
        self.assertEqual(ep.transport.value(), b"")  # no more grabbing
        self.clock.advance(5)
        gate.callback(b"finished")
        self.assertEqual(ep.transport.packets(), [("WORK_COMPLETE", [b"H:1", b"finished"])])
        self.successResultOf(stopped)
        self.assertTrue(ep.transport.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopWaitsForOutstandingGrab(self):
        worker = self.makeWorker("accept")
        worker.register("f", lambda job: b"done")
        self.successResultOf(worker.connect())
        ep = self.endpoints[0]
        ep.transport.clear()
        stopped = worker.stopService()
        self.assertNoResult(stopped)
        ep.feed(assign(b"H:1"))
        self.assertEqual(ep.transport.packets(), [("WORK_COMPLETE", [b"H:1", b"done"])])
        self.successResultOf(stopped)

    def test_graceExpires(self):
        worker = self.makeWorker("accept", grace=10)
        cancelled = []
        worker.register("f", lambda job: Deferred(cancelled.append))
        self.successResultOf(worker.connect())
        ep = self.endpoints[0]
        ep.feed(assign(b"H:1"))
        ep.transport.clear()
        with capturedLogs():
            stopped = worker.stopService()
            self.clock.advance(9.9)
            self.assertNoResult(stopped)
            self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(len(cancelled), 1)
        # Nothing was reported for the abandoned job: the server requeues it.
        self.assertEqual(ep.transport.value(), b"")
        self.assertTrue(ep.transport.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_decorator(self):
        worker = self.makeWorker("accept")

        @worker.function("rev", timeout=2)
        def rev(job):
            return job.payload[::-1]

        self.assertIn(b"rev", worker.factory.functions)
        self.assertEqual(worker.factory.functions[b"rev"].timeout, 2)
        self.assertEqual(rev(Job(b"rev", b"H", b"", b"ab")), b"ba")

    def test_unregister(self):
        worker = self.makeWorker("accept")
        worker.register("f", lambda job: succeed(b""))
        self.successResultOf(worker.connect())
        ep = self.endpoints[0]
        ep.transport.clear()
        worker.unregister("f")
        self.assertEqual(ep.transport.packets(), [("CANT_DO", [b"f"])])
        with capturedLogs():
            ep.feed(assign(b"H:1"))
        self.assertEqual(ep.transport.packets()[0], ("WORK_FAIL", [b"H:1"]))
        self.successResultOf(worker.close())


class MessageTests(SynchronousTestCase):
    """Issue 9 items 9 and 11: log lines for a person, governed by --log-level."""

    def setUp(self):
        self.clock = Clock()
        self.factory = GearmanWorkerFactory(concurrency=1, clock=self.clock)

    def test_raisingHandlerLoggedAtErrorWithFunctionAndHandle(self):
        from twisted.logger import LogLevel, formatEvent

        def f(job):
            raise ValueError("bad input")

        self.factory.register("resize", f)
        proto, t = connect(self.factory)
        with capturedLogs() as events:
            proto.dataReceived(assign(b"H:1", function=b"resize"))
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["log_level"], LogLevel.error)
        text = formatEvent(failures[0])
        self.assertIn("resize", text)
        self.assertIn("H:1", text)
        self.assertNotIn("b'", text)
        self.flushLoggedErrors(ValueError)

    def test_logsRegisteredFunctionsOncePerConnection(self):
        from twisted.logger import formatEvent

        self.factory.register("resize", lambda job: b"")
        self.factory.register("thumb", lambda job: b"")
        with capturedLogs() as events:
            proto, t = connect(self.factory)
            proto.dataReceived(res(P.NO_JOB) + res(P.NOOP) + res(P.NO_JOB))
        lines = [formatEvent(e) for e in events if "Registered" in formatEvent(e)]
        self.assertEqual(len(lines), 1)
        self.assertIn("resize, thumb", lines[0])

    def test_logLevelGovernsWorkerAndPool(self):
        from twisted.logger import LogLevel

        from txgear._log import logLevel, setLogLevel

        old = logLevel()
        setLogLevel(LogLevel.warn)
        try:
            worker = GearmanWorker(["127.0.0.1:4730"], reactor=self.clock, clock=self.clock,
                                   endpointFor=lambda s: FakeEndpoint("accept"))
            worker.register("f", lambda job: b"")
            with capturedLogs() as events:
                self.successResultOf(worker.connect())
                worker.pool.servers[0].protocol.transport.drop()
                self.successResultOf(worker.close())
            self.assertEqual([e for e in events if e["log_level"] < LogLevel.warn], [])
        finally:
            setLogLevel(old)
