"""Tests for txgear._turnwriter: one write per connection per reactor turn."""
from __future__ import annotations

import os

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


def test_peerProtocolsBatchPerTurnWhenTheTransportHasAReactor():
    from txgear._protocol import GearmanPeerProtocol
    from txgear._turnwriter import turnWriterFor

    class Peer(GearmanPeerProtocol):
        pass

    clock = Clock()
    assert turnWriterFor(clock) is turnWriterFor(clock)
    transport = StringTransport()
    transport.reactor = clock  # type: ignore[attr-defined]
    peer = Peer()
    peer.makeConnection(transport)
    peer.sendPacket(PacketType.ECHO_REQ, b"a")
    peer.sendPacket(PacketType.ECHO_REQ, b"b")
    assert transport.value() == b""
    clock.advance(0)
    assert transport.value() == (encodeRequest(PacketType.ECHO_REQ, b"a")
                                 + encodeRequest(PacketType.ECHO_REQ, b"b"))
    # Without a reactor (test transports), packets are written at once.
    plain = StringTransport()
    other = Peer()
    other.makeConnection(plain)
    other.sendPacket(PacketType.ECHO_REQ, b"c")
    assert plain.value() == encodeRequest(PacketType.ECHO_REQ, b"c")


def test_loseConnectionSendsThePendingOutputFirst():
    # A timer callback that writes and then closes, in the same turn.
    clock = Clock()
    transport = StringTransport()
    output = TurnWriter(clock).output(transport)
    output.write(b"last words")
    transport.loseConnection()
    assert transport.disconnecting and transport.value() == b"last words"
    clock.advance(0)
    assert transport.value() == b"last words"
