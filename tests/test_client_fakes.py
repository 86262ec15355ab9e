"""
In-memory fakes shared by the client, worker and pool unit tests: a fake
endpoint per job server whose connections are L{StringTransport}s, and a
decoder for what the code under test wrote.

(This module holds no tests; it is named to match the test files of the
client/worker libraries.)
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txgear._packet import PacketDecoder, PacketType, encodeResponse, splitArguments


def res(kind: int, *args: bytes) -> bytes:
    """A response packet, as a server would send it."""
    return encodeResponse(kind, *args)


class LoopTransport(StringTransport):
    """
    A L{StringTransport} that tells its protocol when it is closed, as a
    real transport would, so that services can stop.
    """

    def __init__(self, port: int = 4730) -> None:
        StringTransport.__init__(self, peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self._decoder = PacketDecoder(expectRequests=True)
        self.closed = False

    def loseConnection(self) -> None:
        self.drop(Failure(ConnectionDone("closed")))

    def abortConnection(self) -> None:
        self.drop(Failure(ConnectionLost("aborted")))

    def drop(self, reason: Optional[Failure] = None) -> None:
        """The connection goes away (server died, network cut)."""
        if self.closed:
            return
        self.closed = True
        self.disconnecting = True
        self.protocol.connectionLost(reason or Failure(ConnectionLost("dropped")))

    def packets(self) -> List[Tuple[str, List[bytes]]]:
        """The packets written since the last call, as C{(NAME, args)}."""
        data = self.value()
        self.clear()
        out = []
        for kind, body in self._decoder.feed(data):
            assert kind > 0, "the client sent a response packet"
            out.append((PacketType(kind).name, splitArguments(kind, body)))
        assert self._decoder.error is None, self._decoder.error
        return out

    def names(self) -> List[str]:
        """Just the names of L{packets}."""
        return [name for name, _ in self.packets()]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A job server's endpoint. C{mode} is C{"accept"} (connect at once),
    C{"refuse"} (fail at once) or C{"hang"} (the attempt waits for
    L{finish}).

    @ivar connections: C{(protocol, transport)} for every connection made.
    @ivar attempts: how many connection attempts were made.
    """

    def __init__(self, mode: str = "accept", port: int = 4730) -> None:
        self.mode = mode
        self.port = port
        self.connections: List[Tuple[Any, LoopTransport]] = []
        self.attempts = 0
        self._hanging: List[Tuple[Deferred, Any]] = []

    def connect(self, factory: Any) -> Deferred:
        self.attempts += 1
        if self.mode == "refuse":
            return fail(ConnectionRefusedError("refused"))
        if self.mode == "hang":
            d: Deferred = Deferred()
            self._hanging.append((d, factory))
            return d
        return succeed(self._connect(factory))

    def _connect(self, factory: Any) -> Any:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        transport = LoopTransport(self.port)
        transport.protocol = proto
        proto.makeConnection(transport)
        self.connections.append((proto, transport))
        return proto

    def finish(self, accept: bool = True) -> None:
        """Complete the hanging attempts."""
        hanging, self._hanging = self._hanging, []
        for d, factory in hanging:
            if accept:
                d.callback(self._connect(factory))
            else:
                d.errback(ConnectionRefusedError("refused"))

    @property
    def transport(self) -> LoopTransport:
        """The transport of the latest connection."""
        return self.connections[-1][1]

    @property
    def protocol(self) -> Any:
        """The latest connection's protocol (as the factory built it)."""
        proto = self.connections[-1][0]
        return getattr(proto, "_protocol", proto)

    def feed(self, data: bytes) -> None:
        """Data from the server on the latest connection."""
        self.connections[-1][0].dataReceived(data)

    def drop(self) -> None:
        """The latest connection is lost."""
        self.transport.drop()
