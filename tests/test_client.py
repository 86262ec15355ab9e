"""
Unit tests of L{txgear.client.GearmanClientProtocol}: one connection, in memory.
"""
from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgear._packet import PacketType as P
from txgear.client import GearmanClientFactory, GearmanClientProtocol, JobStatus
from txgear.errors import ConnectionLost, JobException, JobFailed, ServerError
from txgear.jobs import Priority

from tests.test_client_fakes import LoopTransport, res


def connect(exceptions: bool = True, clientId=None):
    factory = GearmanClientFactory(clientId=clientId, exceptions=exceptions)
    proto = factory.buildProtocol(None)
    transport = LoopTransport()
    transport.protocol = proto
    proto.makeConnection(transport)
    if exceptions:
        assert transport.packets() == [("OPTION_REQ", [b"exceptions"])]
        proto.dataReceived(res(P.OPTION_RES, b"exceptions"))
    return proto, transport


def feedBytewise(proto, data: bytes) -> None:
    for i in range(len(data)):
        proto.dataReceived(data[i:i + 1])


class ConnectTests(SynchronousTestCase):
    def test_optionAndClientId(self):
        factory = GearmanClientFactory(clientId="me")
        proto = factory.buildProtocol(None)
        transport = LoopTransport()
        proto.makeConnection(transport)
        self.assertEqual(transport.packets(), [("SET_CLIENT_ID", [b"me"]),
                                               ("OPTION_REQ", [b"exceptions"])])

    def test_noOption(self):
        proto, transport = connect(exceptions=False)
        self.assertEqual(transport.value(), b"")

    def test_optionRefusedKeepsConnection(self):
        factory = GearmanClientFactory()
        proto = factory.buildProtocol(None)
        transport = LoopTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(res(P.ERROR, b"unknown_option", b""))
        self.assertFalse(transport.closed)
        d = proto.echo(b"x")
        proto.dataReceived(res(P.ECHO_RES, b"x"))
        self.assertEqual(self.successResultOf(d), b"x")


class SubmitTests(SynchronousTestCase):
    def test_wireFormat(self):
        proto, transport = connect()
        proto.submit(b"reverse", b"test")
        self.assertEqual(transport.value(),
                         bytes.fromhex("00524551 00000007 0000000d") + b"reverse\0\0test")

    def test_priorities(self):
        proto, transport = connect()
        proto.submit("f", "x", unique="u", priority=Priority.HIGH)
        proto.submit("f", "x", priority=Priority.LOW)
        proto.submitBackground("f", "x", priority=Priority.HIGH)
        proto.submitBackground("f", "x")
        proto.submitBackground("f", "x", priority=Priority.LOW)
        proto.submitBackground("f", "x", when=1700000000)
        self.assertEqual(transport.packets(), [
            ("SUBMIT_JOB_HIGH", [b"f", b"u", b"x"]),
            ("SUBMIT_JOB_LOW", [b"f", b"", b"x"]),
            ("SUBMIT_JOB_HIGH_BG", [b"f", b"", b"x"]),
            ("SUBMIT_JOB_BG", [b"f", b"", b"x"]),
            ("SUBMIT_JOB_LOW_BG", [b"f", b"", b"x"]),
            ("SUBMIT_JOB_EPOCH", [b"f", b"", b"1700000000", b"x"]),
        ])

    def test_runAtNeedsBackground(self):
        proto, transport = connect()
        from txgear.client import makeSubmission
        self.assertRaises(ValueError, makeSubmission, b"f", b"", None, Priority.NORMAL, False, 5)
        self.assertRaises(ValueError, proto.submit, b"f", b"", b"u" * 64)

    def test_pipelinedOutOfOrder(self):
        proto, transport = connect()
        ds = [proto.submit(b"f", b"job%d" % i) for i in range(3)]
        self.assertEqual(len(transport.packets()), 3)
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") + res(P.JOB_CREATED, b"H:2")
                           + res(P.JOB_CREATED, b"H:3"))
        for d in ds:
            self.assertNoResult(d)
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:3", b"three"))
        self.assertEqual(self.successResultOf(ds[2]), b"three")
        self.assertNoResult(ds[0])
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:1", b"one") + res(P.WORK_COMPLETE, b"H:2", b"two"))
        self.assertEqual(self.successResultOf(ds[0]), b"one")
        self.assertEqual(self.successResultOf(ds[1]), b"two")
        self.assertEqual(proto.pendingCount(), 0)

    def test_everyPacketSplitAcrossReads(self):
        proto, transport = connect()
        seen = []
        d1 = proto.submit(b"f", b"a", onStatus=lambda n, d: seen.append(("status", n, d)),
                          onData=lambda x: seen.append(("data", x)),
                          onWarning=lambda x: seen.append(("warning", x)))
        d2 = proto.submit(b"f", b"b")
        d3 = proto.submit(b"f", b"c")
        feedBytewise(proto, res(P.JOB_CREATED, b"H:1") + res(P.JOB_CREATED, b"H:2")
                     + res(P.JOB_CREATED, b"H:3")
                     + res(P.WORK_STATUS, b"H:1", b"1", b"4")
                     + res(P.WORK_DATA, b"H:1", b"da\0ta")
                     + res(P.WORK_WARNING, b"H:1", b"warn")
                     + res(P.WORK_EXCEPTION, b"H:3", b"ValueError: bad\0x")
                     + res(P.WORK_FAIL, b"H:2")
                     + res(P.WORK_COMPLETE, b"H:1", b"res\0ult"))
        self.assertEqual(seen, [("status", 1, 4), ("data", b"da\0ta"), ("warning", b"warn")])
        self.assertEqual(self.successResultOf(d1), b"res\0ult")
        self.failureResultOf(d2, JobFailed)
        f = self.failureResultOf(d3, JobException)
        self.assertEqual(f.value.data, b"ValueError: bad\0x")

    def test_workFailWithStrayNul(self):
        proto, transport = connect()
        d = proto.submit(b"f", b"a")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") + res(P.WORK_FAIL, b"H:1\0"))
        self.failureResultOf(d, JobFailed)

    def test_callbackErrorsDoNotBreakConnection(self):
        proto, transport = connect()

        def boom(n, d):
            raise RuntimeError("callback bug")

        d = proto.submit(b"f", b"a", onStatus=boom)
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") + res(P.WORK_STATUS, b"H:1", b"1", b"2")
                           + res(P.WORK_COMPLETE, b"H:1", b"ok"))
        self.assertEqual(self.successResultOf(d), b"ok")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_coalescedJobs(self):
        proto, transport = connect()
        d1 = proto.submit(b"f", b"a", unique=b"u")
        d2 = proto.submit(b"f", b"a", unique=b"u")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") * 2 + res(P.WORK_COMPLETE, b"H:1", b"r"))
        self.assertEqual(self.successResultOf(d1), b"r")
        self.assertEqual(self.successResultOf(d2), b"r")

    def test_serverErrorFailsThatSubmission(self):
        proto, transport = connect()
        d1 = proto.submit(b"f", b"a")
        d2 = proto.submit(b"f", b"b")
        proto.dataReceived(res(P.ERROR, b"QUEUE_ERROR", b"Job queue is full")
                           + res(P.JOB_CREATED, b"H:2") + res(P.WORK_COMPLETE, b"H:2", b"r2"))
        f = self.failureResultOf(d1, ServerError)
        self.assertEqual(f.value.code, b"QUEUE_ERROR")
        self.assertEqual(self.successResultOf(d2), b"r2")
        self.assertFalse(transport.closed)

    def test_background(self):
        proto, transport = connect()
        d = proto.submitBackground(b"f", b"a")
        proto.dataReceived(res(P.JOB_CREATED, b"H:9"))
        self.assertEqual(self.successResultOf(d), b"H:9")

    def test_unexpectedJobCreatedAborts(self):
        proto, transport = connect()
        proto.dataReceived(res(P.JOB_CREATED, b"H:1"))
        self.assertTrue(transport.closed)
        self.flushLoggedErrors()

    def test_unknownHandleIgnored(self):
        proto, transport = connect()
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:77", b"x") + res(P.WORK_DATA, b"H:77", b"x"))
        self.assertFalse(transport.closed)


class CancelTests(SynchronousTestCase):
    def test_cancelBeforeCreated(self):
        proto, transport = connect()
        d1 = proto.submit(b"f", b"a")
        d2 = proto.submit(b"f", b"b")
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        # The JOB_CREATED for the cancelled job is swallowed; the next one is matched right.
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") + res(P.JOB_CREATED, b"H:2")
                           + res(P.WORK_COMPLETE, b"H:1", b"one") + res(P.WORK_COMPLETE, b"H:2", b"two"))
        self.assertEqual(self.successResultOf(d2), b"two")
        self.assertEqual(proto.pendingCount(), 0)
        self.assertFalse(transport.closed)

    def test_cancelAfterCreated(self):
        proto, transport = connect()
        seen = []
        d1 = proto.submit(b"f", b"a", onData=seen.append)
        proto.dataReceived(res(P.JOB_CREATED, b"H:1"))
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(proto.pendingCount(), 0)
        proto.dataReceived(res(P.WORK_DATA, b"H:1", b"late") + res(P.WORK_COMPLETE, b"H:1", b"x"))
        self.assertEqual(seen, [])
        d2 = proto.submit(b"f", b"b")
        proto.dataReceived(res(P.JOB_CREATED, b"H:2") + res(P.WORK_COMPLETE, b"H:2", b"ok"))
        self.assertEqual(self.successResultOf(d2), b"ok")

    def test_cancelOneOfCoalesced(self):
        proto, transport = connect()
        d1 = proto.submit(b"f", b"a", unique=b"u")
        d2 = proto.submit(b"f", b"a", unique=b"u")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") * 2)
        d1.cancel()
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:1", b"r"))
        self.failureResultOf(d1, CancelledError)
        self.assertEqual(self.successResultOf(d2), b"r")

    def test_timeout(self):
        from twisted.internet.defer import TimeoutError
        from twisted.internet.task import Clock

        clock = Clock()
        proto, transport = connect()
        d = proto.submit(b"f", b"a").addTimeout(5, clock)
        proto.dataReceived(res(P.JOB_CREATED, b"H:1"))
        clock.advance(5)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(proto.pendingCount(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class LossTests(SynchronousTestCase):
    def test_connectionLostFailsEverything(self):
        proto, transport = connect()
        d1 = proto.submit(b"f", b"a")
        d2 = proto.submit(b"f", b"b")
        d3 = proto.echo(b"ping")
        d4 = proto.getStatus(b"H:5")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1"))
        transport.drop(Failure(ConnectionDone()))
        for d in (d1, d2, d3, d4):
            self.failureResultOf(d, ConnectionLost)
        self.failureResultOf(proto.submit(b"f", b"c"), ConnectionLost)
        self.failureResultOf(proto.echo(b"x"), ConnectionLost)


class QueryTests(SynchronousTestCase):
    def test_echoStatusUnique(self):
        proto, transport = connect()
        e = proto.echo(b"a\0b")
        s = proto.getStatus(b"H:1")
        u = proto.getStatusUnique(b"u1")
        proto.setClientId(b"cid")
        self.assertEqual(transport.packets(), [("ECHO_REQ", [b"a\0b"]), ("GET_STATUS", [b"H:1"]),
                                               ("GET_STATUS_UNIQUE", [b"u1"]),
                                               ("SET_CLIENT_ID", [b"cid"])])
        proto.dataReceived(res(P.STATUS_RES_UNIQUE, b"u1", b"1", b"1", b"3", b"10", b"2")
                           + res(P.STATUS_RES, b"H:1", b"1", b"0", b"", b"")
                           + res(P.ECHO_RES, b"a\0b"))
        self.assertEqual(self.successResultOf(e), b"a\0b")
        st = self.successResultOf(s)
        self.assertIsInstance(st, JobStatus)
        self.assertEqual((st.handle, st.known, st.running, st.numerator, st.denominator),
                         (b"H:1", True, False, 0, 0))
        su = self.successResultOf(u)
        self.assertEqual((su.unique, su.known, su.running, su.numerator, su.denominator, su.waiting),
                         (b"u1", True, True, 3, 10, 2))

    def test_errorGoesToOldestRequest(self):
        proto, transport = connect()
        s = proto.setOption(b"bogus")
        e = proto.echo(b"x")
        proto.dataReceived(res(P.ERROR, b"UNKNOWN_OPTION", b"nope") + res(P.ECHO_RES, b"x"))
        self.failureResultOf(s, ServerError)
        self.assertEqual(self.successResultOf(e), b"x")


class RefusalTests(SynchronousTestCase):
    """Issue 9 item 4: an answered request leaves the connection at once."""

    def test_refusedSubmissionsReleaseTheirPayloads(self):
        import gc
        import os
        import platform

        measure = platform.python_implementation() == "CPython"  # PyPy has no tracemalloc
        if measure:
            import tracemalloc

            tracemalloc.start()
        proto, transport = connect()
        try:
            before = tracemalloc.get_traced_memory()[0] if measure else 0
            for _ in range(10000):
                d = proto.submit(b"f", os.urandom(1000))
                transport.clear()
                proto.dataReceived(res(P.ERROR, b"QUEUE_ERROR", b"queue full"))
                self.failureResultOf(d, ServerError)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before if measure else 0
        finally:
            if measure:
                tracemalloc.stop()
        # 10,000 payloads of 1 KB are 10 MB; the connection keeps none.
        self.assertLess(held, 1000000)
        self.assertEqual(proto.pendingCount(), 0)
        self.assertEqual(proto.outstandingCount(), 0)
        # The connection still works, in order.
        d = proto.submit(b"f", b"x")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1") + res(P.WORK_COMPLETE, b"H:1", b"ok"))
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_oneQueueMixedRequests(self):
        proto, transport = connect()
        sub = proto.submit(b"f", b"x")
        echo = proto.echo(b"e")
        status = proto.getStatus(b"H:9")
        self.assertEqual(proto.outstandingCount(), 3)
        # Another kind of request may be answered before a slow JOB_CREATED.
        proto.dataReceived(res(P.ECHO_RES, b"e"))
        self.assertEqual(self.successResultOf(echo), b"e")
        proto.dataReceived(res(P.JOB_CREATED, b"H:1"))
        proto.dataReceived(res(P.STATUS_RES, b"H:9", b"0", b"0", b"0", b"0"))
        self.assertFalse(self.successResultOf(status).known)
        self.assertEqual(proto.outstandingCount(), 0)
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:1", b"r"))
        self.assertEqual(self.successResultOf(sub), b"r")


class ErrorTextTests(SynchronousTestCase):
    def test_jobExceptionIsReadable(self):
        # Issue 9 item 9: str() is the worker's text, not a bytes repr.
        e = JobException(b"ValueError: bad input \xe2\x9c\x97")
        self.assertEqual(str(e), "ValueError: bad input \u2717")
        self.assertEqual(e.data, b"ValueError: bad input \xe2\x9c\x97")
        self.assertEqual(str(JobException(b"\xff")), "\ufffd")
