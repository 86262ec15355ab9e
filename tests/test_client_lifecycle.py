"""
Issue 9 item 1: starting and stopping a client or a worker at any moment, in
any order, is silent and leaves nothing behind. Real endpoints (from plain
C{host:port} and from endpoint strings) over a L{MemoryReactorClock} whose
connectors behave as the real reactor's do.
"""
from __future__ import annotations

import gc
from typing import Any, List

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, NotConnectingError, UserError
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IReactorPluggableNameResolver
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgear._packet import PacketDecoder, PacketType, encodeResponse
from txgear.client import GearmanClient
from txgear.errors import NoServers
from txgear.worker import GearmanWorker


class _Connector:
    """An C{IConnector} as the real reactor's: stopConnecting raises once connected."""

    def __init__(self, reactor: "_Reactor", factory: Any, port: int) -> None:
        self.reactor = reactor
        self.factory = factory
        self.port = port
        self.state = "connecting"
        self.transport: Any = None

    def stopConnecting(self) -> None:
        if self.state != "connecting":
            raise NotConnectingError("we're not trying to connect")
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(UserError()))

    def disconnect(self) -> None:
        if self.state == "connecting":
            self.stopConnecting()
        elif self.transport is not None:
            self.transport.loseConnection()

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.port)


class _Transport(StringTransport):
    """
    Closes as a real TCP transport does (connectionLost on a later turn), and
    answers a worker's GRABs with NO_JOB as a job server with no jobs does.
    """

    def __init__(self, reactor: "_Reactor", connector: _Connector) -> None:
        StringTransport.__init__(self, peerAddress=connector.getDestination())
        self._reactor = reactor
        self._connector = connector
        self._decoder = PacketDecoder(expectRequests=True)
        self.lost = False

    def write(self, data: bytes) -> None:
        StringTransport.write(self, data)
        for kind, _ in self._decoder.feed(data):
            if kind in (PacketType.GRAB_JOB, PacketType.GRAB_JOB_UNIQ):
                self._reactor.callLater(0, self._answer, encodeResponse(PacketType.NO_JOB))

    def _answer(self, data: bytes) -> None:
        if not self.lost:
            self.protocol.dataReceived(data)

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        self._reactor.callLater(0, self._lose)

    abortConnection = loseConnection

    def _lose(self) -> None:
        self.lost = True
        self._connector.state = "disconnected"
        self.protocol.connectionLost(Failure(ConnectionDone("closed")))
        self._connector.factory.clientConnectionLost(self._connector,
                                                     Failure(ConnectionDone("closed")))


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Resolver:
    """Resolves an IPv4 literal at once (Twisted 22.10's memory reactor has no resolver)."""

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        receiver.addressResolved(IPv4Address("TCP", hostName, portNumber))
        receiver.resolutionComplete()
        return resolution


@implementer(IReactorPluggableNameResolver)
class _Reactor(MemoryReactorClock):
    """Connection attempts the test completes with L{accept} or L{refuse}."""

    def __init__(self) -> None:
        MemoryReactorClock.__init__(self)
        self.attempts: List[_Connector] = []
        self.nameResolver = _Resolver()

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> _Connector:
        MemoryReactorClock.connectTCP(self, host, port, factory, timeout, bindAddress)
        connector = _Connector(self, factory, port)
        self.attempts.append(connector)
        factory.startedConnecting(connector)
        return connector

    def pending(self) -> List[_Connector]:
        self.advance(0)
        return [c for c in self.attempts if c.state == "connecting"]

    def accept(self) -> _Connector:
        connector = self.pending()[-1]
        connector.state = "connected"
        proto = connector.factory.buildProtocol(connector.getDestination())
        transport = _Transport(self, connector)
        transport.protocol = proto
        connector.transport = transport
        proto.makeConnection(transport)
        return connector

    def refuse(self) -> None:
        connector = self.pending()[-1]
        connector.state = "disconnected"
        connector.factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        # HostnameEndpoint notices that its last address failed on its next tick.
        self.advance(0.3)

    def openConnections(self) -> List[_Connector]:
        return [c for c in self.attempts if c.state == "connected"]

    def settle(self) -> None:
        for _ in range(10):
            self.advance(0)


class _Lifecycle:
    """The interleavings, for one kind of service and one form of address."""

    cls: Any = None
    address = "127.0.0.1:{port}"

    def setUp(self) -> None:
        self.reactor = _Reactor()
        self.logs = capturedLogs()
        self.events = self.logs.__enter__()
        self.addCleanup(self.logs.__exit__, None, None, None)

    def make(self) -> Any:
        service = self.cls([self.address.format(port=4730)], reactor=self.reactor,
                           clock=self.reactor)
        if self.cls is GearmanWorker:
            service.register("f", lambda job: b"")
        return service

    def assertClean(self) -> None:
        """Nothing logged above info, no timers, no connections, no attempts."""
        self.reactor.settle()
        gc.collect()
        noisy = [e for e in self.events if e["log_level"] > LogLevel.info]
        self.assertEqual(noisy, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.openConnections(), [])
        self.assertEqual(self.reactor.pending(), [])

    def test_connectThenClose(self) -> None:
        service = self.make()
        d = service.connect()
        self.reactor.accept()
        self.assertIs(self.successResultOf(d), service)
        closed = service.close()
        self.reactor.settle()
        self.successResultOf(closed)
        self.assertClean()

    def test_closeInsideConnectCallback(self) -> None:
        service = self.make()
        closed: List[Any] = []
        service.connect().addCallback(lambda s: closed.append(s.close()))
        self.reactor.accept()
        self.reactor.settle()
        self.successResultOf(closed[0])
        self.assertClean()

    def test_connectFiresAfterTheEndpoint(self) -> None:
        service = self.make()
        d = service.connect()
        self.reactor.pending()
        factory = service.pool.servers[0]._factory
        seen: List[bool] = []
        real = factory.buildProtocol

        def build(addr: Any) -> Any:
            proto = real(addr)
            made = proto.connectionMade

            def connectionMade() -> None:
                made()
                seen.append(bool(d.called))
            proto.connectionMade = connectionMade
            return proto
        factory.buildProtocol = build
        self.reactor.accept()
        self.assertEqual(seen, [False])
        self.successResultOf(d)
        closed = service.close()
        self.reactor.settle()
        self.successResultOf(closed)
        self.assertClean()

    def test_closeWhileConnecting(self) -> None:
        service = self.make()
        d = service.connect()
        self.assertEqual(len(self.reactor.pending()), 1)
        closed = service.close()
        self.reactor.settle()
        self.successResultOf(closed)
        self.failureResultOf(d, NoServers)
        self.assertClean()

    def test_closeBeforeConnect(self) -> None:
        service = self.make()
        self.successResultOf(service.close())
        d = service.connect()
        self.reactor.accept()
        self.successResultOf(d)
        closed = service.close()
        self.reactor.settle()
        self.successResultOf(closed)
        self.assertClean()

    def test_closeTwice(self) -> None:
        service = self.make()
        d = service.connect()
        self.reactor.accept()
        self.successResultOf(d)
        first = service.close()
        second = service.close()
        self.reactor.settle()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertClean()

    def test_connectWhileClosing(self) -> None:
        service = self.make()
        d = service.connect()
        self.reactor.accept()
        self.successResultOf(d)
        closing = service.close()
        again = service.connect()
        self.reactor.settle()
        self.successResultOf(closing)
        if self.reactor.pending():
            # The client closed its connection; the worker, still waiting
            # for its GRAB's answer when connect() came, kept it.
            self.reactor.accept()
        self.assertIs(self.successResultOf(again), service)
        self.assertEqual(len(self.reactor.openConnections()), 1)
        closed = service.close()
        self.reactor.settle()
        self.successResultOf(closed)
        self.assertClean()

    def test_closeWhileWaitingToRetry(self) -> None:
        service = self.make()
        d = service.connect()
        self.reactor.refuse()
        self.failureResultOf(d, NoServers)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.successResultOf(service.close())
        self.assertClean()

    def test_closeWhileConnectionIsMadeButNotAnnounced(self) -> None:
        # The connector has connected (stopConnecting would raise
        # NotConnectingError) but the endpoint's Deferred has not fired yet.
        service = self.make()
        d = service.connect()
        self.reactor.pending()
        factory = service.pool.servers[0]._factory
        real = factory.buildProtocol
        closing: List[Any] = []

        def build(addr: Any) -> Any:
            proto = real(addr)
            made = proto.connectionMade

            def connectionMade() -> None:
                made()
                closing.append(service.close())
            proto.connectionMade = connectionMade
            return proto
        factory.buildProtocol = build
        self.reactor.accept()
        self.reactor.settle()
        self.successResultOf(closing[0])
        # The client closes at once; the worker first waits for its GRAB's
        # answer, so its connect() may see the connection.
        self.assertIn(self.successResultOf(d.addErrback(lambda f: f.trap(NoServers) and None)),
                      (None, service))
        self.assertClean()

    def test_closeWhenTheFirstAttemptFails(self) -> None:
        # User code run because an attempt failed stops the service: the
        # ClientService is still handling that failure when it is called.
        service = self.make()
        closed: List[Any] = []
        service.connect().addErrback(lambda f: closed.append(service.close()))
        self.reactor.refuse()
        self.successResultOf(closed[0])
        self.assertClean()

    def test_restartAndStopAgainFromCloseCallbacks(self) -> None:
        # connect() in close()'s callback, close() in that connect()'s: each
        # runs inside the previous step's ClientService callbacks.
        service = self.make()
        self.reactor_connect(service)
        steps: List[Any] = []

        def reopen(_: Any) -> None:
            again = service.connect()
            steps.append(again)
            steps.append(Deferred())
            again.addCallback(lambda s: s.close().chainDeferred(steps[1]))

        service.close().addCallback(reopen)
        self.reactor.settle()
        if self.reactor.pending():
            self.reactor.accept()
        self.reactor.settle()
        self.successResultOf(steps[0])
        self.successResultOf(steps[1])
        self.assertClean()

    def test_closeAgainInsideCloseCallback(self) -> None:
        service = self.make()
        self.reactor_connect(service)
        second: List[Any] = []
        first = service.close()
        first.addCallback(lambda _: second.append(service.close()))
        self.reactor.settle()
        self.successResultOf(first)
        self.successResultOf(second[0])
        self.assertClean()

    def reactor_connect(self, service: Any) -> None:
        d = service.connect()
        self.reactor.accept()
        self.assertIs(self.successResultOf(d), service)


class ClientPlainAddressTests(_Lifecycle, SynchronousTestCase):
    cls = GearmanClient


class ClientEndpointStringTests(_Lifecycle, SynchronousTestCase):
    cls = GearmanClient
    address = "tcp:host=127.0.0.1:port={port}"


class WorkerPlainAddressTests(_Lifecycle, SynchronousTestCase):
    cls = GearmanWorker


class WorkerEndpointStringTests(_Lifecycle, SynchronousTestCase):
    cls = GearmanWorker
    address = "tcp:host=127.0.0.1:port={port}"
