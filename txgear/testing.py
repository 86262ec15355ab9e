# -*- test-case-name: tests.test_testing -*-
"""
Unit-testing your own code that submits Gearman jobs or runs a worker, with
no network and no real reactor.

L{MemoryGearmanServer} is txgear's own job server (its real state and
protocol objects) reached through in-memory transports; the test drives
the bytes with L{MemoryGearmanServer.flush} and time with a
L{twisted.internet.task.Clock}, as C{treq.testing} does for HTTP::

    from txgear.testing import MemoryGearmanServer

    def test_thumbnails(self):
        server = MemoryGearmanServer()
        worker = server.worker({"resize": lambda job: job.payload.upper()})
        client = server.client()
        d = client.submit("resize", b"abc")
        server.flush()
        self.assertEqual(self.successResultOf(d), b"ABC")
        server.close()

Your code under test takes a L{GearmanClient} (or a L{GearmanWorker}); give
it the one L{MemoryGearmanServer.client} returns. Everything happens when the
test calls L{MemoryGearmanServer.flush} (or L{MemoryGearmanServer.advance}).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.test.iosim import FakeAddress, FakeTransport, IOPump
from zope.interface import implementer

from txgear.client import GearmanClient
from txgear.server import GearmanServerFactory, JobServerState
from txgear.worker import GearmanWorker, JobFunction

#: Reconnect at once after a drop; a server that stays down is tried again each
#: second of the test's clock (a zero delay there would never let Clock.advance end).
_RETRY_AT_ONCE: Callable[[int], float] = lambda attempt: 0.0 if attempt <= 1 else 1.0


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """
    A client endpoint whose connections reach a L{MemoryGearmanServer}.

    @ivar refuse: when true, connection attempts fail (a server that is down).
    """

    def __init__(self, server: "MemoryGearmanServer") -> None:
        self._server = server
        self.refuse = False

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        if self.refuse or self._server.down:
            from twisted.internet.error import ConnectionRefusedError
            from twisted.internet.defer import fail

            return fail(ConnectionRefusedError("the memory server is down"))
        return succeed(self._server._accept(factory))


class MemoryGearmanServer:
    """
    A txgear job server living in memory.

    @ivar clock: the L{Clock} of the server and of every client and worker
        it makes; advance it (or call L{advance}) to let time pass.
    @ivar state: the server's L{JobServerState} (inspect it if you need to).
    @ivar factory: the server's L{GearmanServerFactory}.
    @ivar address: the name clients and workers know the server by.
    @ivar down: when true, new connection attempts are refused.
    """

    address = "memory"

    def __init__(self, clock: Optional[Clock] = None, **stateOptions: Any) -> None:
        """
        @param clock: a L{Clock} to share with your code (default: a new one).
        @param stateOptions: passed to L{JobServerState} (e.g. C{jobRetries}).
        """
        self.clock = clock if clock is not None else Clock()
        stateOptions.setdefault("handlePrefix", b"H:memory")
        self.state = JobServerState(clock=self.clock, **stateOptions)
        self.factory = GearmanServerFactory(self.state)
        self.down = False
        self._pumps: List[IOPump] = []
        self._services: List[Any] = []

    # Connecting

    def endpoint(self) -> MemoryEndpoint:
        """A client endpoint to this server (for protocols of your own)."""
        return MemoryEndpoint(self)

    def _accept(self, factory: IProtocolFactory) -> Any:
        serverProtocol: Any = self.factory.buildProtocol(None)
        clientProtocol: Any = factory.buildProtocol(FakeAddress())
        serverTransport = FakeTransport(serverProtocol, isServer=True)
        clientTransport = FakeTransport(clientProtocol, isServer=False)
        serverProtocol.makeConnection(serverTransport)
        clientProtocol.makeConnection(clientTransport)
        # flush() runs the clock's due calls itself (IOPump takes a clock only
        # from Twisted 23 on).
        self._pumps.append(IOPump(clientProtocol, serverProtocol, clientTransport,
                                  serverTransport, False))
        return clientProtocol

    def client(self, **kwargs: Any) -> GearmanClient:
        """
        A started L{GearmanClient} connected to this server.

        @param kwargs: more L{GearmanClient} arguments (e.g. C{clientId}).
        """
        client = GearmanClient([self.address], reactor=self.clock, clock=self.clock,
                               retryPolicy=_RETRY_AT_ONCE,
                               endpointFor=lambda server: self.endpoint(), **kwargs)
        client.startService()
        self._services.append(client)
        self.flush()
        return client

    def worker(self, functions: Optional[Mapping[Union[str, bytes], JobFunction]] = None,
               **kwargs: Any) -> GearmanWorker:
        """
        A started L{GearmanWorker} connected to this server.

        @param functions: functions to register, by name.
        @param kwargs: more L{GearmanWorker} arguments (e.g. C{concurrency}).
        """
        worker = GearmanWorker([self.address], reactor=self.clock, clock=self.clock,
                               retryPolicy=_RETRY_AT_ONCE,
                               endpointFor=lambda server: self.endpoint(), **kwargs)
        for name, function in (functions or {}).items():
            worker.register(name, function)
        worker.startService()
        self._services.append(worker)
        self.flush()
        return worker

    # Driving

    def flush(self) -> bool:
        """
        Deliver every byte written so far, in both directions, and the
        answers they cause, until nothing moves.

        @return: whether anything moved.
        """
        moved = False
        for _ in range(10000):
            self.clock.advance(0)  # the calls due now, e.g. each turn's output
            progress = False
            for pump in list(self._pumps):
                if pump.pump():
                    progress = True
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self._pumps.remove(pump)
            if not progress:
                return moved
            moved = True
        raise RuntimeError("the connections never went quiet")

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass on L{clock}, then L{flush}."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def dropConnections(self) -> None:
        """Every connection is cut (the server went away for a moment)."""
        for pump in self._pumps:
            pump.serverIO.loseConnection()
        self.flush()

    # Looking

    def status(self) -> Dict[str, Tuple[int, int, int]]:
        """
        What the admin C{status} command would list: by function name,
        C{(queued or running, running, workers)}.
        """
        return {name.decode("utf-8", "replace"): (f.total(), f.running, f.workers)
                for name, f in self.state.functions.items()}

    def connectionCount(self) -> int:
        """How many connections are open."""
        return len(self._pumps)

    # Ending

    def close(self) -> None:
        """
        Stop every client and worker this server made and close every
        connection; afterwards the clock has no pending calls of theirs.
        """
        services, self._services = self._services, []
        for service in services:
            if service.running:
                d = service.close()
                self.flush()
                if not d.called:
                    # A worker's graceful stop waits for running jobs.
                    self.flush()
        self.dropConnections()
        self.state.cancelTimers()


__all__ = ["MemoryEndpoint", "MemoryGearmanServer"]
