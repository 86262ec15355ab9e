"""
Unit tests of L{txgear.client.GearmanClient}: several servers, fake
endpoints, a fake clock.
"""
from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgear._packet import PacketType as P
from txgear._pool import serverIndex
from txgear.client import BackgroundJob, GearmanClient
from txgear.errors import ConnectionLost, NoServers, SubmitTimeout

from tests.test_client_fakes import FakeEndpoint, res


class ClientTestCase(SynchronousTestCase):
    def makeClient(self, *modes: str, **kwargs):
        self.clock = Clock()
        self.endpoints = [FakeEndpoint(mode, port=4730 + i) for i, mode in enumerate(modes)]
        names = [f"127.0.0.1:{4730 + i}" for i in range(len(modes))]
        byName = dict(zip(names, self.endpoints))
        client = GearmanClient(names, reactor=self.clock, clock=self.clock,
                               retryPolicy=backoffPolicy(initialDelay=1.0, factor=2.0, maxDelay=8.0,
                                                         jitter=lambda: 0),
                               endpointFor=lambda server: byName[server.name], **kwargs)
        self.client = client
        self.pending = []
        real = client.submit, client.submitBackground, client.getStatusUnique

        def track(method):
            def call(*a, **kw):
                d = method(*a, **kw)
                self.pending.append(d)
                return d
            return call

        client.submit, client.submitBackground, client.getStatusUnique = map(track, real)
        return client

    def ack(self, endpoint: FakeEndpoint) -> None:
        """Answer the OPTION_REQ every new connection sends."""
        assert endpoint.transport.packets() == [("OPTION_REQ", [b"exceptions"])]
        endpoint.feed(res(P.OPTION_RES, b"exceptions"))

    def tearDown(self):
        if getattr(self, "client", None) is not None and self.client.running:
            self.successResultOf(self.client.close())
        for d in self.pending:
            d.addErrback(lambda f: f.trap(ConnectionLost, NoServers))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectTests(ClientTestCase):
    def test_connectFiresWhenOneServerIsUp(self):
        client = self.makeClient("refuse", "accept")
        result = self.successResultOf(client.connect())
        self.assertIs(result, client)
        self.assertEqual(client.connectedServers(), ["127.0.0.1:4731"])

    def test_connectFailsWithNoServers(self):
        client = self.makeClient("refuse", "refuse")
        f = self.failureResultOf(client.connect(), NoServers)
        self.assertIn("127.0.0.1:4730", str(f.value))

    def test_reconnectionBackoff(self):
        client = self.makeClient("refuse")
        self.failureResultOf(client.connect(), NoServers)
        ep = self.endpoints[0]
        self.assertEqual(ep.attempts, 1)
        # backoffPolicy(1, factor 2): retry n waits 1 * 2**n seconds.
        self.clock.advance(1.99)
        self.assertEqual(ep.attempts, 1)
        self.clock.advance(0.01)
        self.assertEqual(ep.attempts, 2)
        self.clock.advance(4)
        self.assertEqual(ep.attempts, 3)
        ep.mode = "accept"
        self.clock.advance(8)
        self.assertEqual(ep.attempts, 4)
        self.assertEqual(client.connectedServers(), ["127.0.0.1:4730"])
        # A lost connection is retried after the first delay again.
        ep.drop()
        self.assertEqual(client.connectedServers(), [])
        self.clock.advance(2)
        self.assertEqual(ep.attempts, 5)
        self.assertEqual(client.connectedServers(), ["127.0.0.1:4730"])

    def test_submitWaitsForConnectingServer(self):
        client = self.makeClient("hang")
        client.startService()
        d = client.submit(b"f", b"x")
        self.assertNoResult(d)
        self.endpoints[0].finish()
        ep = self.endpoints[0]
        self.assertEqual(ep.transport.packets(), [("OPTION_REQ", [b"exceptions"]),
                                                  ("SUBMIT_JOB", [b"f", b"", b"x"])])
        ep.feed(res(P.JOB_CREATED, b"H:1") + res(P.WORK_COMPLETE, b"H:1", b"done"))
        self.assertEqual(self.successResultOf(d), b"done")

    def test_submitFailsWhenEveryAttemptFails(self):
        client = self.makeClient("hang", "hang")
        client.startService()
        d = client.submit(b"f", b"x")
        self.endpoints[0].finish(accept=False)
        self.assertNoResult(d)
        self.endpoints[1].finish(accept=False)
        self.failureResultOf(d, NoServers)

    def test_submitWaitsForNextAttemptAfterLoss(self):
        """A server that just dropped gets one more attempt before NoServers."""
        client = self.makeClient("accept")
        self.successResultOf(client.connect())
        self.ack(self.endpoints[0])
        self.endpoints[0].drop()
        d = client.submit(b"f", b"x")
        self.assertNoResult(d)
        self.clock.advance(2)
        self.endpoints[0].transport.packets()
        self.endpoints[0].feed(res(P.OPTION_RES, b"exceptions") + res(P.JOB_CREATED, b"H:1")
                               + res(P.WORK_COMPLETE, b"H:1", b"ok"))
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_cancelWhileWaitingForServer(self):
        client = self.makeClient("hang")
        client.startService()
        d = client.submit(b"f", b"x")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(client.pool._waiters, [])
        self.endpoints[0].finish()
        self.assertEqual(self.endpoints[0].transport.names(), ["OPTION_REQ"])

    def test_stopFailsWaiters(self):
        client = self.makeClient("hang")
        client.startService()
        d = client.submit(b"f", b"x")
        self.successResultOf(client.close())
        self.failureResultOf(d, NoServers)


class SelectionTests(ClientTestCase):
    def test_roundRobin(self):
        client = self.makeClient("accept", "accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        for i in range(6):
            client.submit(b"f", b"%d" % i)
        counts = [len(ep.transport.packets()) for ep in self.endpoints]
        self.assertEqual(counts, [2, 2, 2])

    def test_uniqueHashing(self):
        client = self.makeClient("accept", "accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        for unique in [b"alpha", b"beta", b"gamma", b"delta", b"alpha"]:
            client.submit(b"f", b"x", unique=unique)
            expected = self.endpoints[serverIndex(unique, 3)]
            self.assertEqual(expected.transport.packets(), [("SUBMIT_JOB", [b"f", unique, b"x"])])

    def test_uniqueSkipsDownServer(self):
        client = self.makeClient("accept", "accept")
        unique = next(u for u in (b"u%d" % i for i in range(100)) if serverIndex(u, 2) == 0)
        self.endpoints[0].mode = "refuse"
        self.successResultOf(client.connect())
        self.ack(self.endpoints[1])
        d = client.submit(b"f", b"x", unique=unique)
        self.assertEqual(self.endpoints[1].transport.names(), ["SUBMIT_JOB"])
        self.endpoints[1].feed(res(P.JOB_CREATED, b"H:1") + res(P.WORK_COMPLETE, b"H:1", b"r"))
        self.assertEqual(self.successResultOf(d), b"r")

    def test_uniqueWaitsForItsConnectingServer(self):
        client = self.makeClient("hang", "accept")
        unique = next(u for u in (b"u%d" % i for i in range(100)) if serverIndex(u, 2) == 0)
        client.startService()
        self.ack(self.endpoints[1])
        client.submit(b"f", b"x", unique=unique)
        self.assertEqual(self.endpoints[1].transport.packets(), [])
        self.endpoints[0].finish()
        self.assertEqual(self.endpoints[0].transport.names(), ["OPTION_REQ", "SUBMIT_JOB"])


class FailoverTests(ClientTestCase):
    def twoServers(self):
        client = self.makeClient("accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        return client

    def test_failoverBeforeJobCreated(self):
        client = self.twoServers()
        a, b = self.endpoints
        d = client.submit(b"f", b"x", unique=None)
        first = a if a.transport.value() else b
        other = b if first is a else a
        self.assertEqual(first.transport.names(), ["SUBMIT_JOB"])
        first.drop()
        self.assertEqual(other.transport.packets(), [("SUBMIT_JOB", [b"f", b"", b"x"])])
        other.feed(res(P.JOB_CREATED, b"H:2") + res(P.WORK_COMPLETE, b"H:2", b"moved"))
        self.assertEqual(self.successResultOf(d), b"moved")

    def test_failoverBackground(self):
        client = self.twoServers()
        a, b = self.endpoints
        d = client.submitBackground(b"f", b"x")
        first = a if a.transport.value() else b
        other = b if first is a else a
        first.transport.clear()
        first.drop()
        self.assertEqual(other.transport.names(), ["SUBMIT_JOB_BG"])
        other.feed(res(P.JOB_CREATED, b"H:7"))
        job = self.successResultOf(d)
        self.assertEqual(job, BackgroundJob(b"H:7", f"127.0.0.1:{other.port}"))

    def test_lossAfterJobCreatedIsNotResubmitted(self):
        client = self.twoServers()
        a, b = self.endpoints
        d = client.submit(b"f", b"x")
        first = a if a.transport.value() else b
        other = b if first is a else a
        first.transport.clear()
        first.feed(res(P.JOB_CREATED, b"H:1"))
        first.drop()
        f = self.failureResultOf(d, ConnectionLost)
        self.assertIn("H:1", str(f.value))
        self.assertEqual(other.transport.packets(), [])

    def test_retriesOptIn(self):
        client = self.twoServers()
        a, b = self.endpoints
        d = client.submit(b"f", b"x", retries=1)
        first = a if a.transport.value() else b
        other = b if first is a else a
        first.transport.clear()
        first.feed(res(P.JOB_CREATED, b"H:1"))
        first.drop()
        self.assertNoResult(d)
        self.assertEqual(other.transport.names(), ["SUBMIT_JOB"])
        other.feed(res(P.JOB_CREATED, b"H:9"))
        other.drop()
        self.failureResultOf(d, ConnectionLost)

    def test_everyServerDropsBeforeCreated(self):
        client = self.twoServers()
        a, b = self.endpoints
        a.mode = b.mode = "refuse"
        d = client.submit(b"f", b"x")
        a.drop()
        b.drop()
        # Both failed this submission; reconnect attempts fail too.
        self.clock.advance(2)
        self.failureResultOf(d, NoServers)

    def test_manyJobsOneServerKilled(self):
        """Every job is accounted for: completed, moved, or failed with ConnectionLost."""
        client = self.twoServers()
        a, b = self.endpoints
        ds = [client.submit(b"f", b"%d" % i) for i in range(10)]
        na = len(a.transport.packets())
        nb = len(b.transport.packets())
        self.assertEqual(na + nb, 10)
        # A acknowledges two of its jobs, then dies.
        a.feed(res(P.JOB_CREATED, b"H:a1") + res(P.JOB_CREATED, b"H:a2"))
        a.drop()
        moved = b.transport.packets()
        self.assertEqual(len(moved), na - 2)
        # B acknowledges and completes everything it has.
        for i in range(nb + len(moved)):
            b.feed(res(P.JOB_CREATED, b"H:b%d" % i))
        for i in range(nb + len(moved)):
            b.feed(res(P.WORK_COMPLETE, b"H:b%d" % i, b"ok"))
        results = []
        for d in ds:
            r = []
            d.addBoth(r.append)
            self.assertEqual(len(r), 1)
            results.append(r[0])
        completed = [r for r in results if r == b"ok"]
        lost = [r for r in results if not isinstance(r, bytes)]
        self.assertEqual(len(completed), 8)
        self.assertEqual(len(lost), 2)
        for f in lost:
            f.trap(ConnectionLost)


class TimeoutAndQueryTests(ClientTestCase):
    def test_timeoutReleasesJob(self):
        client = self.makeClient("accept")
        self.successResultOf(client.connect())
        self.ack(self.endpoints[0])
        d = client.submit(b"f", b"x", timeout=10)
        self.endpoints[0].feed(res(P.JOB_CREATED, b"H:1"))
        proto = self.endpoints[0].protocol
        self.clock.advance(10)
        # The server's status is asked (on a connection of its own) for at most 1 s.
        self.clock.advance(1)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(proto.pendingCount(), 0)
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:1", b"late"))
        d2 = client.submit(b"f", b"y")
        proto.dataReceived(res(P.JOB_CREATED, b"H:2") + res(P.WORK_COMPLETE, b"H:2", b"ok"))
        self.assertEqual(self.successResultOf(d2), b"ok")

    def test_getStatusAsksTheRightServer(self):
        client = self.makeClient("accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        job = BackgroundJob(b"H:1", "127.0.0.1:4731")
        d = client.getStatus(job)
        self.assertEqual(self.endpoints[0].transport.packets(), [])
        self.assertEqual(self.endpoints[1].transport.packets(), [("GET_STATUS", [b"H:1"])])
        self.endpoints[1].feed(res(P.STATUS_RES, b"H:1", b"1", b"1", b"2", b"5"))
        status = self.successResultOf(d)
        self.assertEqual((status.known, status.running, status.numerator, status.denominator,
                          status.server), (True, True, 2, 5, "127.0.0.1:4731"))

    def test_getStatusBareHandleAsksAll(self):
        client = self.makeClient("accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        d = client.getStatus(b"H:1")
        self.endpoints[0].feed(res(P.STATUS_RES, b"H:1", b"0", b"0", b"0", b"0"))
        self.endpoints[1].feed(res(P.STATUS_RES, b"H:1", b"1", b"0", b"0", b"0"))
        self.assertEqual(self.successResultOf(d).server, "127.0.0.1:4731")

    def test_getStatusUniqueUsesHash(self):
        client = self.makeClient("accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        client.getStatusUnique(b"abc")
        ep = self.endpoints[serverIndex(b"abc", 2)]
        self.assertEqual(ep.transport.packets(), [("GET_STATUS_UNIQUE", [b"abc"])])

    def test_echoAndClientId(self):
        client = self.makeClient("accept", clientId="c1")
        self.successResultOf(client.connect())
        ep = self.endpoints[0]
        self.assertEqual(ep.transport.names(), ["SET_CLIENT_ID", "OPTION_REQ"])
        d = client.echo(b"hi")
        client.setClientId("c2")
        self.assertEqual(ep.transport.packets(), [("ECHO_REQ", [b"hi"]), ("SET_CLIENT_ID", [b"c2"])])
        ep.feed(res(P.OPTION_RES, b"exceptions") + res(P.ECHO_RES, b"hi"))
        self.assertEqual(self.successResultOf(d), b"hi")
        ep.drop()
        self.clock.advance(2)
        self.assertEqual(ep.transport.packets()[0], ("SET_CLIENT_ID", [b"c2"]))

    def test_unknownServerName(self):
        client = self.makeClient("accept")
        self.assertRaises(ValueError, client.echo, b"x", server="nope:1")


class SpreadTests(ClientTestCase):
    """Issue 9 item 2: load spreads over every server that is up."""

    def test_connectWaitForAll(self):
        client = self.makeClient("accept", "hang", "refuse")
        d = client.connect(waitForAll=True)
        self.assertNoResult(d)
        self.endpoints[1].finish()
        self.assertIs(self.successResultOf(d), client)
        for ep in self.endpoints[:2]:
            self.ack(ep)
        for i in range(6):
            client.submit(b"f", b"%d" % i)
        self.assertEqual([len(ep.transport.packets()) for ep in self.endpoints[:2]], [3, 3])

    def test_whenAllConnectedFailsWithNoServers(self):
        client = self.makeClient("hang", "hang")
        client.startService()
        d = client.whenAllConnected()
        self.endpoints[0].finish(accept=False)
        self.assertNoResult(d)
        self.endpoints[1].finish(accept=False)
        self.failureResultOf(d, NoServers)

    def test_serverThatComesUpLaterGetsItsShare(self):
        client = self.makeClient("accept", "hang")
        self.successResultOf(client.connect())
        a, b = self.endpoints
        self.ack(a)
        self.endpoints[1].finish()
        self.ack(b)
        for i in range(10):
            client.submit(b"f", b"%d" % i)
        self.assertEqual([len(a.transport.packets()), len(b.transport.packets())], [5, 5])

    def test_dashUniqueHashesByPayload(self):
        client = self.makeClient("accept", "accept", "accept")
        self.successResultOf(client.connect())
        for ep in self.endpoints:
            self.ack(ep)
        for payload in [b"photo-%03d.jpg" % i for i in range(6)]:
            client.submit(b"f", payload, unique="-")
            expected = self.endpoints[serverIndex(payload, 3)]
            self.assertEqual(expected.transport.packets(), [("SUBMIT_JOB", [b"f", b"-", payload])])


class FailoverWaitTests(ClientTestCase):
    """Issue 9 item 3: a second server that is down never makes failover worse."""

    def oneUpOneDown(self):
        client = self.makeClient("accept", "refuse")
        self.successResultOf(client.connect())
        self.ack(self.endpoints[0])
        return client

    def test_lostBeforeCreatedWaitsForReconnection(self):
        client = self.oneUpOneDown()
        a = self.endpoints[0]
        d = client.submit(b"f", b"x")
        self.assertEqual(a.transport.names(), ["SUBMIT_JOB"])
        a.drop()
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertEqual(a.transport.packets(), [("OPTION_REQ", [b"exceptions"]),
                                                 ("SUBMIT_JOB", [b"f", b"", b"x"])])
        a.feed(res(P.OPTION_RES, b"exceptions") + res(P.JOB_CREATED, b"H:1")
               + res(P.WORK_COMPLETE, b"H:1", b"ok"))
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_withTimeoutWaitsThroughOutages(self):
        client = self.oneUpOneDown()
        a = self.endpoints[0]
        d = client.submit(b"f", b"x", timeout=30)
        a.transport.clear()
        a.mode = "refuse"
        a.drop()
        # Every server is down now; the submission waits for its timeout.
        self.clock.advance(2)
        self.clock.advance(4)
        self.assertNoResult(d)
        a.mode = "accept"
        self.clock.advance(8)
        self.assertEqual(a.transport.names(), ["OPTION_REQ", "SUBMIT_JOB"])
        a.feed(res(P.OPTION_RES, b"exceptions") + res(P.JOB_CREATED, b"H:1")
               + res(P.WORK_COMPLETE, b"H:1", b"ok"))
        self.assertEqual(self.successResultOf(d), b"ok")

    def test_withTimeoutEndsAtTimeout(self):
        client = self.oneUpOneDown()
        a = self.endpoints[0]
        d = client.submit(b"f", b"x", timeout=5)
        a.mode = "refuse"
        a.drop()
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(client.pool._waiters, [])


class TimeoutMessageTests(ClientTestCase):
    """Issue 9 item 9: a timeout says whether any worker is registered."""

    def submitAndTimeOut(self, status: bytes):
        client = self.makeClient("accept")
        self.successResultOf(client.connect())
        ep = self.endpoints[0]
        self.ack(ep)
        d = client.submit("resize", b"x", timeout=2)
        ep.feed(res(P.JOB_CREATED, b"H:1"))
        self.clock.advance(2)
        self.assertNoResult(d)
        admin = ep.connections[-1][1]
        self.assertEqual(admin.value(), b"status\n")
        ep.connections[-1][0].dataReceived(status)
        self.assertTrue(admin.closed)
        return self.failureResultOf(d, TimeoutError)

    def test_noWorkerRegistered(self):
        f = self.submitAndTimeOut(b"other\t0\t0\t3\nresize\t1\t0\t0\n.\n")
        self.assertIsInstance(f.value, SubmitTimeout)
        self.assertEqual(str(f.value), "no worker is registered for 'resize' on 127.0.0.1:4730: "
                                       "the job waited 2 s in its queue")
        self.assertEqual(f.value.workers, 0)

    def test_functionUnknownToServer(self):
        f = self.submitAndTimeOut(b".\n")
        self.assertIn("no worker is registered for 'resize'", str(f.value))

    def test_workersBusy(self):
        f = self.submitAndTimeOut(b"resize\t9\t2\t2\n.\n")
        self.assertEqual(str(f.value), "job for 'resize' did not finish within 2 s "
                                       "(2 worker(s) registered for it on 127.0.0.1:4730)")

    def test_statusUnanswered(self):
        client = self.makeClient("accept")
        self.successResultOf(client.connect())
        ep = self.endpoints[0]
        self.ack(ep)
        d = client.submit("resize", b"x", timeout=2)
        ep.feed(res(P.JOB_CREATED, b"H:1"))
        self.clock.advance(2)
        self.clock.advance(1)
        f = self.failureResultOf(d, TimeoutError)
        self.assertEqual(str(f.value), "job for 'resize' did not finish within 2 s")
        self.assertTrue(ep.connections[-1][1].closed)
