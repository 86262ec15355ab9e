# -*- test-case-name: tests.test_turnwriter -*-
"""
One write per connection per reactor turn.

A job server answers many small packets to many connections while it
processes one read. Twisted's transports buffer each C{write} and register
the socket with the poller until the buffer drains: two C{epoll_ctl} calls
per connection per turn, which cost as much as the C{send} itself. L{TurnWriter}
gathers each connection's output during a turn and, once the turn's events
are processed (a C{callLater(0)}), sends it with one C{send}. Only what the
kernel does not take goes through the transport's normal buffering (and its
producer/backpressure machinery); anything that is not a plain TCP transport
(TLS, UNIX sockets, test transports) gets one C{transport.write} instead.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.internet import tcp


def directSocket(transport: Any) -> Optional[Any]:
    """The socket to send on directly, if C{transport} is a plain TCP connection."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False):
        required = ("dataBuffer", "offset", "_tempDataLen")
        if all(hasattr(transport, name) for name in required):
            return transport.getHandle()
    return None


class BufferedOutput:
    """
    The output of one connection, waiting for the end of the turn.

    @ivar pending: chunks written this turn, or C{None} when there are none.
    """

    __slots__ = ("transport", "socket", "pending", "writer")

    def __init__(self, writer: "TurnWriter", transport: Any) -> None:
        self.writer = writer
        self.transport = transport
        self.socket = directSocket(transport)
        self.pending: Optional[List[bytes]] = None
        # Whoever closes the connection (a ClientService stopping, user code
        # in a timer callback) must not close it ahead of this turn's output.
        loseConnection = transport.loseConnection

        def flushThenLoseConnection(*args: Any, **kwargs: Any) -> Any:
            self.flush()
            return loseConnection(*args, **kwargs)

        transport.loseConnection = flushThenLoseConnection

    def write(self, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            self.pending = [data]
            self.writer._dirty.append(self)
            if not self.writer._scheduled:
                self.writer._schedule()
        else:
            pending.append(data)

    def writeSequence(self, data: List[bytes]) -> None:
        """
        Large payloads: send what is pending and the pieces in one gathering
        C{sendmsg}, so the payload is not copied into a joined buffer.
        """
        pending = self.pending
        if pending is not None:
            self.pending = None
            data = pending + data
        transport = self.transport
        sock = self._idleSocket()
        if sock is not None:
            try:
                sent = sock.sendmsg(data)
            except OSError:
                sent = 0
            if sent:
                rest = []
                for piece in data:
                    if sent >= len(piece):
                        sent -= len(piece)
                        continue
                    rest.append(piece[sent:] if sent else piece)
                    sent = 0
                data = rest
                if not data:
                    return
        # Transports take bytes only; large payloads may be memoryviews.
        transport.writeSequence([bytes(p) if type(p) is memoryview else p for p in data])

    def flush(self) -> None:
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        transport = self.transport
        sock = self._idleSocket()
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error the transport will report itself
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def _idleSocket(self) -> Optional[Any]:
        """The socket, if it may be written to now: connected, nothing buffered."""
        sock = self.socket
        transport = self.transport
        if (sock is not None and transport.connected and not transport.disconnecting
                and len(transport.dataBuffer) == transport.offset and not transport._tempDataLen):
            return sock
        return None

    def discard(self) -> None:
        self.pending = None


_writers: Dict[int, "TurnWriter"] = {}


def turnWriterFor(reactor: Any) -> "TurnWriter":
    """The L{TurnWriter} shared by every connection of C{reactor}."""
    writer = _writers.get(id(reactor))
    if writer is None or writer._clock is not reactor:
        writer = _writers[id(reactor)] = TurnWriter(reactor)
    return writer


class TurnWriter:
    """
    Flushes every L{BufferedOutput} written to during a reactor turn.

    @param clock: an C{IReactorTime}; the flush is a C{callLater(0)}, which the
        reactor runs after the current batch of I/O events.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._dirty: List[BufferedOutput] = []
        self._scheduled = False

    def output(self, transport: Any) -> BufferedOutput:
        """A buffered output for one connection's transport."""
        return BufferedOutput(self, transport)

    def _schedule(self) -> None:
        self._scheduled = True
        self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send everything written so far."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for output in dirty:
            output.flush()
