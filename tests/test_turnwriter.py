"""Tests for txgear._turnwriter: one write per connection per reactor turn."""
from __future__ import annotations

import os
import platform

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txgear._packet import PacketDecoder, PacketType, encodeRequest
from txgear._turnwriter import TurnWriter, directSocket
from txgear.server import GearmanServerFactory, JobServerState


def test_outputWaitsForTheEndOfTheTurnAndIsWrittenOnce():
    clock = Clock()
    writer = TurnWriter(clock)
    transport = StringTransport()
    writes = []
    transport.write = writes.append  # type: ignore[method-assign]
    output = writer.output(transport)
    output.write(b"a")
    output.write(b"b")
    assert writes == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert writes == [b"ab"]
    clock.advance(0)
    assert writes == [b"ab"] and clock.getDelayedCalls() == []


def test_writeSequenceKeepsOrderWithPendingOutput():
    clock = Clock()
    writer = TurnWriter(clock)
    transport = StringTransport()
    output = writer.output(transport)
    output.write(b"first")
    output.writeSequence([b"second", b"third"])
    output.write(b"fourth")
    clock.advance(0)
    assert transport.value() == b"firstsecondthirdfourth"


def test_discardDropsPendingOutput():
    clock = Clock()
    transport = StringTransport()
    output = TurnWriter(clock).output(transport)
    output.write(b"x")
    output.discard()
    clock.advance(0)
    assert transport.value() == b""


def test_onlyPlainTcpTransportsAreSentToDirectly():
    assert directSocket(StringTransport()) is None


class _Collect(protocol.Protocol):
    def __init__(self, expected: int) -> None:
        self.decoder = PacketDecoder(expectRequests=False)
        self.packets = []
        self.expected = expected
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.packets.extend(self.decoder.feed(data))
        if len(self.packets) >= self.expected and not self.done.called:
            self.done.callback(self.packets)


@pytest_twisted.ensureDeferred
async def test_realSocketSmallAndLargeOutputArriveInOrder():
    from twisted.internet import reactor

    factory = GearmanServerFactory(JobServerState(clock=reactor))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    try:
        client = _Collect(expected=4)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoint.connect(protocol.Factory.forProtocol(lambda: client))
        big = os.urandom(8 * 1024 * 1024)  # more than the kernel takes at once
        client.transport.write(encodeRequest(PacketType.ECHO_REQ, b"one")
                               + encodeRequest(PacketType.ECHO_REQ, big)
                               + encodeRequest(PacketType.ECHO_REQ, b"three")
                               + encodeRequest(PacketType.ECHO_REQ, b"four"))
        packets = await client.done.addTimeout(30, reactor)
        assert [body for _, body in packets] == [b"one", big, b"three", b"four"]
        client.transport.loseConnection()
    finally:
        await port.stopListening()


def _tcpPair(reactor, sendBuffer=None):
    """
    A real C{tcp.Connection} on one end of a local socket pair (no network),
    driven by hand: C{doWrite()} is what the reactor calls when writable.
    """
    import socket

    from twisted.internet import tcp

    ours, theirs = socket.socketpair()
    if sendBuffer:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sendBuffer)
    theirs.setblocking(False)
    proto = protocol.Protocol()
    conn = tcp.Connection(ours, proto, reactor)
    conn.connected = 1
    proto.makeConnection(conn)
    return conn, theirs


def _drain(conn, theirs, limit=10000):
    """Read everything the peer gets, letting the transport write as the reactor would."""
    received = bytearray()
    for _ in range(limit):
        try:
            chunk = theirs.recv(1 << 20)
        except BlockingIOError:
            chunk = b""
        received += chunk
        if conn.connected and not chunk:
            if conn.doWrite() is not None or conn.reactor.getWriters() == []:
                if not chunk:
                    try:
                        received += theirs.recv(1 << 20)
                    except BlockingIOError:
                        pass
                    break
    return bytes(received)


class _Listener:
    def __init__(self):
        self.events = []

    def outputFull(self):
        self.events.append("full")

    def outputDrained(self):
        self.events.append("drained")

    def outputOverflow(self):
        self.events.append("overflow")


def test_plainTcpSendsDirectlyThenHandsTheTransportOneBoundedPiece():
    from twisted.internet.testing import MemoryReactorClock

    from txgear._turnwriter import PIECE

    reactor = MemoryReactorClock()
    conn, theirs = _tcpPair(reactor, sendBuffer=65536)
    handed = []
    write = conn.write
    conn.write = lambda data: (handed.append(len(data)), write(data))  # type: ignore[method-assign]
    output = TurnWriter(reactor).output(conn)
    assert conn.producer is output and not conn.streamingProducer
    payload = os.urandom(4 * 1024 * 1024)
    output.write(b"head")
    output.writeSequence([b"hdr", payload])
    reactor.advance(0)
    # The kernel took some; the transport holds one piece; the rest waits here.
    assert len(handed) == 1 and handed[0] <= PIECE
    assert 0 < output.queued < len(payload) + 7
    assert _drain(conn, theirs) == b"head" + b"hdr" + payload
    assert output.queued == 0

def test_aLargePacketLeavesWhenWrittenIfTheTransportHoldsNothing():
    # Its payload dwarfs a send's cost; small output still waits for the
    # end of the turn, and the order is kept.
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    conn, theirs = _tcpPair(reactor)
    output = TurnWriter(reactor).output(conn)
    payload = os.urandom(100 * 1024)
    output.write(b"before")
    output.writeSequence([b"hdr", payload])
    output.write(b"after")

    def received():
        data = bytearray()
        while True:
            try:
                chunk = theirs.recv(1 << 20)
            except BlockingIOError:
                return bytes(data)
            data += chunk

    assert received() == b"before" + b"hdr" + payload
    assert output.queued == len(b"after")
    reactor.advance(0)
    assert received() == b"after" and output.queued == 0


@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="tracemalloc is CPython's")
def test_oneLargeBufferIsHeldOnceForManyConnectionsThatDoNotRead():
    import tracemalloc

    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    writer = TurnWriter(reactor)
    pairs = [_tcpPair(reactor, sendBuffer=65536) for _ in range(20)]
    outputs = [writer.output(conn) for conn, _ in pairs]
    body = os.urandom(4 * 1024 * 1024)
    tracemalloc.start()
    try:
        for output in outputs:
            output.writeSequence([b"0123456789ab", body])
        reactor.advance(0)
        for conn, _ in pairs:
            conn.doWrite()  # the reactor: the sockets are writable
            conn.doWrite()
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Each connection counts the whole buffer; memory holds it about once.
    assert all(o.queued > 3 * 1024 * 1024 for o in outputs)
    assert grown < 16 * 1024 * 1024, grown
    for (conn, theirs), output in zip(pairs, outputs):
        assert _drain(conn, theirs) == b"0123456789ab" + body


def test_loseConnectionFromElsewhereStillSendsThisTurnsOutputFirst():
    # A timer callback that writes and then closes, in the same turn: the
    # output is the transport's producer, which holds the close until it is sent.
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    conn, theirs = _tcpPair(reactor)
    output = TurnWriter(reactor).output(conn)
    output.write(b"last words")
    conn.loseConnection()
    assert conn.doWrite() is None  # the transport asks its producer first
    assert conn.producer is None
    assert conn.doWrite() is not None  # then closes
    assert theirs.recv(100) == b"last words"


def test_peerProtocolsBatchPerTurnOnPlainTcp():
    from twisted.internet.testing import MemoryReactorClock

    from txgear._protocol import GearmanPeerProtocol

    class Peer(GearmanPeerProtocol):
        pass

    reactor = MemoryReactorClock()
    conn, theirs = _tcpPair(reactor)
    peer = Peer()
    conn.protocol = peer
    peer.makeConnection(conn)
    peer.sendPacket(PacketType.ECHO_REQ, b"a")
    peer.sendPacket(PacketType.ECHO_REQ, b"b")
    with pytest.raises(BlockingIOError):
        theirs.recv(100)
    reactor.advance(0)
    assert theirs.recv(100) == (encodeRequest(PacketType.ECHO_REQ, b"a")
                                + encodeRequest(PacketType.ECHO_REQ, b"b"))
    # Other transports (TLS, test transports) are written at once.
    plain = StringTransport()
    plain.reactor = reactor  # type: ignore[attr-defined]
    other = Peer()
    other.makeConnection(plain)
    other.sendPacket(PacketType.ECHO_REQ, b"c")
    assert plain.value() == encodeRequest(PacketType.ECHO_REQ, b"c")


def test_streamingTransportKeepsTheRestWhilePaused():
    clock = Clock()
    transport = StringTransport()
    output = TurnWriter(clock).output(transport)
    assert transport.producer is output and transport.streaming
    output.pauseProducing()  # the transport's buffer is over its high-water mark
    output.write(b"x" * 1000)
    clock.advance(0)
    assert transport.value() == b"" and output.queued == 1000
    output.pauseProducing()
    output.resumeProducing()
    assert transport.value() == b"x" * 1000 and output.queued == 0


def test_softAndHardLimitsTellTheListener():
    clock = Clock()
    transport = StringTransport()
    listener = _Listener()
    output = TurnWriter(clock).output(transport, listener, softLimit=1000, hardLimit=5000)
    output.pauseProducing()
    output.write(b"a" * 900)
    assert listener.events == []
    output.write(b"a" * 200)
    output.write(b"a" * 200)
    assert listener.events == ["full"] and output.isFull()
    output.resumeProducing()
    clock.advance(0)  # this turn's output leaves at the end of the turn
    assert listener.events == ["full", "drained"] and not output.isFull()
    output.pauseProducing()
    output.write(b"b" * 6000)
    assert listener.events == ["full", "drained", "overflow"]
    # Everything is dropped, now and later; the transport is left alone.
    output.write(b"c" * 10)
    clock.advance(0)
    assert output.queued == 0 and transport.value() == b"a" * 1300
    assert transport.producer is None


def test_transportClosingUnregistersOnceAllIsHanded():
    """
    A streaming transport that holds a close until its producer leaves (TLS)
    says so with transportClosing: this turn's output and the backlog are
    handed over first, then the output unregisters.
    """
    clock = Clock()
    transport = StringTransport()
    output = TurnWriter(clock).output(transport)
    output.write(b"reply")
    transport.loseConnection()
    output.transportClosing()
    assert transport.value() == b"reply" and transport.producer is None

    paused = StringTransport()
    output = TurnWriter(clock).output(paused)
    output.pauseProducing()
    output.write(b"x" * 1000)
    clock.advance(0)
    paused.loseConnection()
    output.transportClosing()
    assert paused.value() == b"" and paused.producer is output  # still held: not sent yet
    output.resumeProducing()
    assert paused.value() == b"x" * 1000 and paused.producer is None


@pytest.mark.parametrize("viewsApart", [False, True])
def test_buffersHoldingAViewLeaveOneSendEachWherePyPyWouldCopyThem(monkeypatch, viewsApart):
    """
    Where C{sendmsg} copies views (PyPy), buffers that hold a view are sent
    one C{send} each, stopping at the first one not taken whole; the bytes
    and the count of what is queued are the same either way.
    """
    from twisted.internet.testing import MemoryReactorClock

    from txgear import _turnwriter

    monkeypatch.setattr(_turnwriter, "_GATHER_COPIES_VIEWS", viewsApart)
    reactor = MemoryReactorClock()
    conn, theirs = _tcpPair(reactor, sendBuffer=65536)
    output = TurnWriter(reactor).output(conn)
    calls = []

    class Recording:
        def __init__(self, sock):
            self.sock = sock

        def send(self, data):
            calls.append("send")
            return self.sock.send(data)

        def sendmsg(self, buffers):
            calls.append("sendmsg")
            return self.sock.sendmsg(buffers)

    output.socket = Recording(output.socket)
    small = os.urandom(100 * 1024)
    payload = os.urandom(4 * 1024 * 1024)
    output.writeSequence([b"hdr1", memoryview(small)[1:]])
    output.writeSequence([b"hdr2", memoryview(payload)[1:], b"end"])
    assert calls[0] == ("send" if viewsApart else "sendmsg")
    assert _drain(conn, theirs) == b"hdr1" + small[1:] + b"hdr2" + payload[1:] + b"end"
    assert output.queued == 0
