"""
Tests of L{txgear.testing}: the in-memory job server users test their own
code with.
"""
from __future__ import annotations

from twisted.internet.defer import Deferred, TimeoutError
from twisted.trial.unittest import SynchronousTestCase

from txgear.errors import JobException
from txgear.testing import MemoryGearmanServer


class MemoryServerTests(SynchronousTestCase):
    def setUp(self):
        self.server = MemoryGearmanServer()

    def tearDown(self):
        self.server.close()
        self.assertEqual(self.server.connectionCount(), 0)
        self.assertEqual(self.server.clock.getDelayedCalls(), [])

    def test_roundTrip(self):
        self.server.worker({"reverse": lambda job: job.payload[::-1]})
        client = self.server.client()
        d = client.submit("reverse", b"abc")
        self.assertNoResult(d)
        self.server.flush()
        self.assertEqual(self.successResultOf(d), b"cba")

    def test_asyncHandlerProgressAndData(self):
        gate = Deferred()

        async def resize(job):
            job.sendStatus(1, 2)
            job.sendData(b"half")
            await gate
            return b"done"

        self.server.worker({"resize": resize})
        client = self.server.client()
        seen = []
        d = client.submit("resize", b"img", onStatus=lambda n, t: seen.append((n, t)),
                          onData=seen.append)
        self.server.flush()
        self.assertEqual(seen, [(1, 2), b"half"])
        self.assertEqual(self.server.status(), {"resize": (1, 1, 1)})
        gate.callback(None)
        self.server.flush()
        self.assertEqual(self.successResultOf(d), b"done")

    def test_workerException(self):
        def broken(job):
            raise ValueError("no such image")

        self.server.worker({"resize": broken})
        client = self.server.client()
        d = client.submit("resize", b"x")
        self.server.flush()
        f = self.failureResultOf(d, JobException)
        self.assertEqual(str(f.value), "ValueError: no such image")
        self.flushLoggedErrors(ValueError)

    def test_backgroundJobWaitsForAWorker(self):
        client = self.server.client()
        d = client.submitBackground("resize", b"x", unique="photo-1")
        self.server.flush()
        job = self.successResultOf(d)
        self.assertEqual(job.server, "memory")
        self.assertEqual(self.server.status(), {"resize": (1, 0, 0)})
        done = []
        self.server.worker({"resize": lambda j: done.append(j.unique)})
        self.server.flush()
        self.assertEqual(done, [b"photo-1"])
        self.assertEqual(self.server.status(), {"resize": (0, 0, 1)})

    def test_timeoutSaysNoWorker(self):
        client = self.server.client()
        d = client.submit("resize", b"x", timeout=5)
        self.server.flush()
        self.server.advance(5)
        f = self.failureResultOf(d, TimeoutError)
        self.assertIn("no worker is registered for 'resize' on memory", str(f.value))

    def test_connectionsDropAndComeBack(self):
        self.server.worker({"echo": lambda job: job.payload})
        client = self.server.client()
        sessions = set(self.server.state.sessions)
        self.server.dropConnections()
        # Clients and workers of a memory server reconnect at once.
        self.assertEqual(client.connectedServers(), ["memory"])
        self.assertEqual(self.server.connectionCount(), 2)
        self.assertFalse(sessions & set(self.server.state.sessions))
        d = client.submit("echo", b"again")
        self.server.flush()
        self.assertEqual(self.successResultOf(d), b"again")

    def test_serverDown(self):
        from txgear.errors import NoServers

        self.server.down = True
        client = self.server.client()
        d = client.submit("echo", b"x")
        self.failureResultOf(d, NoServers)


class PublicNamesTests(SynchronousTestCase):
    """Issue 9 item 13: the public surface is importable from C{txgear}."""

    def test_topLevelImports(self):
        from txgear import GearmanClient, GearmanServerService, GearmanWorker, StoreError
        from txgear.client import GearmanClient as client
        from txgear.server import GearmanServerService as service
        from txgear.worker import GearmanWorker as worker

        self.assertIs(GearmanClient, client)
        self.assertIs(GearmanWorker, worker)
        self.assertIs(GearmanServerService, service)
        self.assertTrue(issubclass(StoreError, Exception))

    def test_allNamesResolve(self):
        import txgear

        for name in txgear.__all__:
            self.assertIsNotNone(getattr(txgear, name), name)
        self.assertRaises(AttributeError, getattr, txgear, "Nonsense")

    def test_importingTxgearLoadsNoServer(self):
        import subprocess
        import sys

        code = ("import sys, txgear; txgear.NoServers; "
                "print(sorted(m for m in sys.modules if m.startswith('txgear.server')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=__import__("os").path.dirname(__import__("os").path.dirname(
                                 __file__)), timeout=60)
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)
