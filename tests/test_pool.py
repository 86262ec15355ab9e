"""Tests of L{txgear._pool.ServerPool} with fake endpoints and a fake clock."""
from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txgear._pool import ServerPool, serverIndex, uniqueHash
from txgear.errors import NoServers

from tests.test_client_fakes import FakeEndpoint


class _Peer(Protocol):
    poolServer = None

    def connectionLost(self, reason=None):
        self.poolServer.protocolLost(self)


class PoolTests(SynchronousTestCase):
    def makePool(self, *modes):
        self.clock = Clock()
        self.endpoints = [FakeEndpoint(m, port=5000 + i) for i, m in enumerate(modes)]
        names = [f"h:{5000 + i}" for i in range(len(modes))]
        byName = dict(zip(names, self.endpoints))
        return ServerPool(names, Factory.forProtocol(_Peer), reactor=self.clock, clock=self.clock,
                          retryPolicy=backoffPolicy(initialDelay=1, factor=2, jitter=lambda: 0),
                          endpointFor=lambda s: byName[s.name])

    def test_sameUniqueSameServer(self):
        # The Perl client's rule: a unique always goes to the same server for
        # the same server list (in every client, every process).
        pools = [self.makePool("accept", "accept", "accept") for _ in range(2)]
        for u in (b"", b"a", b"job-123", b"\xff" * 40, b"3f2a9c1e-77b0-4c1d-9a31-0c5f2b6e8d10"):
            self.assertEqual(uniqueHash(u), uniqueHash(bytes(u)))
            self.assertEqual([s.index for s in pools[0].ringFor(u)],
                             [s.index for s in pools[1].ringFor(u)])

    def test_namesScatter(self):
        # Uniques without numbers still spread (the text part is hashed).
        names = [("%c%c%c" % (97 + i % 26, 97 + i // 26 % 26, 97 + i // 676)).encode()
                 for i in range(1000)]
        for servers in (2, 3, 5):
            counts = [0] * servers
            for u in names:
                counts[serverIndex(u, servers)] += 1
            even = 1000 / servers
            self.assertTrue(all(abs(c - even) < even * 0.25 for c in counts), counts)

    def test_sequentialIdsSpreadEvenly(self):
        # Issue 9 item 2: 1,000 sequential ids land within 10% of even.
        for pattern in (b"%d", b"photo-%03d.jpg", b"job-%06d", b"user:%d:avatar", b"%04d"):
            for servers in (2, 3, 5):
                counts = [0] * servers
                for i in range(1000):
                    counts[serverIndex(pattern % i, servers)] += 1
                even = 1000 / servers
                for count in counts:
                    self.assertLessEqual(abs(count - even), even * 0.10, (pattern, servers, counts))

    def test_idsWithAStrideSpreadEvenly(self):
        # Ids that step by the number of servers (only even ids, every tenth
        # id...) must not all land on one server.
        for pattern in (b"%d", b"job-%d", b"photo-%03d.jpg"):
            for step in (2, 3, 4, 5, 10, 100):
                for servers in (2, 3, 5):
                    counts = [0] * servers
                    for i in range(1000):
                        counts[serverIndex(pattern % (i * step), servers)] += 1
                    even = 1000 / servers
                    for count in counts:
                        self.assertLessEqual(abs(count - even), even * 0.10,
                                             (pattern, step, servers, counts))

    def test_ringOrder(self):
        pool = self.makePool("accept", "accept", "accept")
        ring = pool.ringFor(b"abc")
        start = serverIndex(b"abc", 3)
        self.assertEqual([s.index for s in ring], [(start + i) % 3 for i in range(3)])

    def test_duplicateServerRejected(self):
        self.assertRaises(ValueError, ServerPool, ["a", "a:4730"], Factory(),
                          reactor=MemoryReactorClock())
        self.assertRaises(ValueError, ServerPool, [], Factory(), reactor=MemoryReactorClock())

    def test_statesAndRoundRobin(self):
        pool = self.makePool("accept", "refuse", "hang")
        self.assertEqual([s.state for s in pool.servers], ["new"] * 3)
        pool.start()
        self.assertEqual([s.state for s in pool.servers], ["connected", "down", "connecting"])
        picks = {pool.pickConnected().index for _ in range(4)}
        self.assertEqual(picks, {0})
        self.endpoints[2].finish()
        picks = [pool.pickConnected().index for _ in range(4)]
        self.assertEqual(sorted(set(picks)), [0, 2])
        self.assertEqual(picks.count(0), 2)
        self.successResultOf(pool.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waitersFailWhenAllAttemptsFail(self):
        pool = self.makePool("hang", "hang")
        pool.start()
        d = pool.whenReady()
        self.endpoints[0].finish(accept=False)
        self.assertNoResult(d)
        self.endpoints[1].finish(accept=False)
        f = self.failureResultOf(d, NoServers)
        self.assertIn("h:5000", str(f.value))
        # Everything down: fail at once.
        self.failureResultOf(pool.whenReady(), NoServers)
        pool.stop()

    def test_waiterExclusion(self):
        pool = self.makePool("accept", "accept")
        pool.start()
        a, b = pool.servers
        for _ in range(3):
            self.assertIs(self.successResultOf(pool.whenReady(exclude=[a])), b)
        self.assertIs(self.successResultOf(pool.whenReady(preferred=[b, a])), b)
        self.failureResultOf(pool.whenReady(exclude=[a, b]), NoServers)
        pool.stop()

    def test_lostServerGetsItsRetry(self):
        pool = self.makePool("accept")
        pool.start()
        self.endpoints[0].drop()
        self.assertEqual(pool.servers[0].state, "lost")
        d = pool.whenReady()
        self.assertNoResult(d)
        self.clock.advance(2)
        self.assertIs(self.successResultOf(d), pool.servers[0])
        pool.stop()

    def test_stopFailsWaiters(self):
        pool = self.makePool("hang")
        pool.start()
        d = pool.whenReady()
        pool.stop()
        self.failureResultOf(d, NoServers)
        self.failureResultOf(pool.whenReady(), NoServers)


class PoolMessageTests(SynchronousTestCase):
    """Issue 9 item 9: the retry message names the address as written, with a rounded delay."""

    def test_retryMessage(self):
        from twisted.logger import capturedLogs, formatEvent

        clock = Clock()
        endpoint = FakeEndpoint("refuse")
        pool = ServerPool(["tcp:host=127.0.0.1:port=4730"], Factory.forProtocol(_Peer),
                          reactor=clock, clock=clock,
                          retryPolicy=lambda attempt: 2.0749708348490192,
                          endpointFor=lambda s: endpoint)
        with capturedLogs() as events:
            pool.start()
        lines = [formatEvent(e) for e in events]
        text = "\n".join(lines)
        # ClientService's own line, once: no second retry line of txgear's.
        retries = [line for line in lines if "retry" in line.lower()]
        self.assertEqual(retries, ["Scheduling retry 1 to connect tcp:host=127.0.0.1:port=4730 "
                                   "in 2.07 seconds."])
        self.assertNotIn("2.0749", text)
        self.assertNotIn("object at", text)
        self.successResultOf(pool.stop())
        self.assertEqual(clock.getDelayedCalls(), [])


class PoolClientServiceTests(SynchronousTestCase):
    """Each server of the pool is kept connected by a ClientService of its own."""

    def test_eachServerRunsOnAClientService(self):
        from twisted.application.internet import ClientService

        clock = Clock()
        endpoints = {"h:5000": FakeEndpoint("accept", 5000), "h:5001": FakeEndpoint("refuse", 5001)}
        pool = ServerPool(list(endpoints), Factory.forProtocol(_Peer), reactor=clock, clock=clock,
                          retryPolicy=backoffPolicy(initialDelay=1, factor=2, jitter=lambda: 0),
                          endpointFor=lambda s: endpoints[s.name])
        services = [s.service for s in pool.servers]
        self.assertTrue(all(isinstance(s, ClientService) for s in services), services)
        self.assertEqual([s.running for s in services], [False, False])
        pool.start()
        self.assertEqual([s.running for s in services], [True, True])
        self.assertEqual([s.state for s in pool.servers], ["connected", "down"])
        # The refused server's retry is ClientService's, on the pool's clock.
        self.assertEqual([round(c.getTime()) for c in clock.getDelayedCalls()], [2])
        clock.advance(2)
        self.assertEqual(endpoints["h:5001"].attempts, 2)
        self.successResultOf(pool.stop())
        self.assertEqual([s.running for s in services], [False, False])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(endpoints["h:5000"].transport.closed)

    def test_stopFromCallbacksOfSynchronousEndpoints(self):
        # Endpoints that connect or fail inside connect() (ClientService is
        # then still starting): stopping, restarting and stopping again from
        # the callbacks they fire is safe, and leaves nothing behind.
        for mode in ("accept", "refuse"):
            clock = Clock()
            endpoint = FakeEndpoint(mode)
            pool = ServerPool(["h:5000"], Factory.forProtocol(_Peer), reactor=clock, clock=clock,
                              retryPolicy=backoffPolicy(initialDelay=1, factor=2, jitter=lambda: 0),
                              endpointFor=lambda s: endpoint)
            steps = []

            def restart(_):
                pool.start()
                steps.append(pool.stop())

            def first(result):
                steps.append(pool.stop().addCallback(restart))

            pool.whenReady().addBoth(first)
            pool.start()
            self.assertEqual(len(steps), 2, mode)
            for d in steps:
                self.assertIsNone(self.successResultOf(d))
            self.assertFalse(pool.servers[0].service.running)
            self.assertEqual(clock.getDelayedCalls(), [])
            self.assertTrue(all(t.closed for _, t in endpoint.connections))

    def test_connectionLostBeforeTheEndpointFires(self):
        # The connection is made and lost before the endpoint's Deferred
        # fires: a failed attempt for ClientService, which retries.
        from twisted.internet.defer import Deferred

        from tests.test_client_fakes import LoopTransport

        attempts = []

        class Endpoint:
            def connect(self, factory):
                d = Deferred()
                attempts.append((d, factory))
                return d

        clock = Clock()
        pool = ServerPool(["h:5000"], Factory.forProtocol(_Peer), reactor=clock, clock=clock,
                          retryPolicy=backoffPolicy(initialDelay=1, factor=2, jitter=lambda: 0),
                          endpointFor=lambda s: Endpoint())
        pool.start()
        d, factory = attempts[0]
        proto = factory.buildProtocol(None)
        transport = LoopTransport()
        transport.protocol = proto
        proto.makeConnection(transport)
        transport.drop()
        d.callback(proto)
        server = pool.servers[0]
        self.assertEqual(server.state, "down")
        self.assertIn("closed at once", server.lastError.getErrorMessage())
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(2)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(server.state, "connecting")
        self.successResultOf(pool.stop())
        self.assertTrue(attempts[1][0].called)     # cancelled
        self.assertEqual(clock.getDelayedCalls(), [])
