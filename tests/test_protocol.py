"""
Unit tests of L{txgear._protocol}: the packet dispatch of client and worker
connections, and their adaptive read size.
"""
from __future__ import annotations

import socket

from twisted.internet import protocol, tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from txgear._packet import PacketType as P
from txgear._protocol import LARGE_READ, SMALL_READ, GearmanPeerProtocol

from tests.test_client_fakes import res


class Recorder(GearmanPeerProtocol):
    adaptiveReads = True

    def __init__(self) -> None:
        self.seen: list = []

    def packet_WORK_COMPLETE(self, handle: bytes, result: bytes) -> None:
        self.seen.append(("packet", handle, result))

    def body_WORK_DATA(self, body: bytes) -> None:
        self.seen.append(("body", body))

    def packet_NOOP(self) -> None:
        self.seen.append(("noop",))


class Overrides(Recorder):
    def packet_WORK_DATA(self, handle: bytes, data: bytes) -> None:
        self.seen.append(("override", handle, data))


def connected(cls=Recorder):
    proto = cls()
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_dispatchByArgumentsOrBody():
    proto, transport = connected()
    proto.dataReceived(res(P.WORK_COMPLETE, b"H:1", b"a\0b") + res(P.WORK_DATA, b"H:1", b"x")
                       + res(P.NOOP))
    assert proto.seen == [("packet", b"H:1", b"a\0b"), ("body", b"H:1\0x"), ("noop",)]


def test_subclassOverridesABodyHandlerWithAPacketHandler():
    proto, transport = connected(Overrides)
    proto.dataReceived(res(P.WORK_DATA, b"H:1", b"x"))
    assert proto.seen == [("override", b"H:1", b"x")]


def test_tooFewArgumentsAbort():
    proto, transport = connected()
    with capturedLogs() as events:
        proto.dataReceived(res(P.WORK_COMPLETE, b"H:1"))
    assert proto.seen == []
    assert transport.disconnected  # abortConnection
    assert any("needs 2 arguments, body has 1" in str(e.get("message")) for e in events)


def tcpPair(reactor):
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    conn = tcp.Connection(ours, protocol.Protocol(), reactor)
    conn.connected = 1
    return conn, theirs


def test_adaptiveReadSize():
    reactor = MemoryReactorClock()
    conn, theirs = tcpPair(reactor)
    proto = Recorder()
    conn.protocol = proto
    proto.makeConnection(conn)
    try:
        sizes = [conn.bufferSize]

        def read(data: bytes) -> None:
            theirs.sendall(data)
            conn.doRead()
            sizes.append(conn.bufferSize)

        # One large packet: while reads fill the buffer, it doubles, up to
        # Twisted's 64 KiB.
        body = 300000
        left = 12 + body
        header = b"\0RES" + int(P.WORK_DATA).to_bytes(4, "big") + body.to_bytes(4, "big")
        read(header + b"H\0" + b"y" * (conn.bufferSize - 14))
        left -= SMALL_READ
        while left > conn.bufferSize:
            left -= conn.bufferSize
            read(b"y" * conn.bufferSize)
        read(b"y" * left)
        assert proto.seen == [("body", b"H\0" + b"y" * (body - 2))]
        assert sizes[:8] == [SMALL_READ, 2 * SMALL_READ, 4 * SMALL_READ, 8 * SMALL_READ,
                             16 * SMALL_READ, 32 * SMALL_READ, LARGE_READ, LARGE_READ]
        # Small reads halve it, down to the smallest.
        del sizes[:]
        for _ in range(8):
            read(res(P.NOOP))
        assert sizes == [LARGE_READ // 2 ** i for i in range(1, 7)] + [SMALL_READ, SMALL_READ]
        assert SMALL_READ == LARGE_READ // 2 ** 6
    finally:
        theirs.close()
        conn.socket.close()


def test_readSizeLeftAloneWithoutAdaptiveReads():
    reactor = MemoryReactorClock()
    conn, theirs = tcpPair(reactor)

    class Plain(Recorder):
        adaptiveReads = False

    proto = Plain()
    conn.protocol = proto
    proto.makeConnection(conn)
    try:
        theirs.sendall(res(P.NOOP))
        conn.doRead()
        assert proto.seen == [("noop",)]
        assert conn.bufferSize == tcp.Connection.bufferSize == LARGE_READ
    finally:
        theirs.close()
        conn.socket.close()


def test_readSizeLeftAloneOnOtherTransports():
    proto, transport = connected()
    proto.dataReceived(res(P.NOOP))
    assert not hasattr(transport, "bufferSize")


def test_clientAndWorkerCheckTheirHotPackets():
    from txgear._clientprotocol import GearmanClientProtocol
    from txgear.worker import GearmanWorkerFactory

    client = GearmanClientProtocol()
    client.exceptions = False
    clientTransport = StringTransport()
    client.makeConnection(clientTransport)
    worker = GearmanWorkerFactory().buildProtocol(None)
    workerTransport = StringTransport()
    worker.makeConnection(workerTransport)
    with capturedLogs() as events:
        client.dataReceived(res(P.WORK_COMPLETE, b"H:1"))
        worker.dataReceived(res(P.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u"))
    assert clientTransport.disconnected and workerTransport.disconnected
    messages = [str(e.get("message")) for e in events]
    assert any("type 13 needs 2 arguments, body has 1" in m for m in messages)
    assert any("type 31 needs 4 arguments, body has 3" in m for m in messages)


def test_largeAndSmallPacketsOnTheWire():
    """Submissions and results, small and large (written without a copy), encode alike."""
    from txgear._clientprotocol import GearmanClientProtocol
    from txgear._packet import PacketDecoder, splitArguments
    from txgear.jobs import Priority
    from txgear.worker import GearmanWorkerFactory

    def written(transport):
        decoder = PacketDecoder(expectRequests=True)
        return [(P(kind).name, splitArguments(kind, body)) for kind, body in decoder.feed(transport.value())]

    big = bytes(range(256)) * 400  # 100 KiB
    client = GearmanClientProtocol()
    client.exceptions = False
    clientTransport = StringTransport()
    client.makeConnection(clientTransport)
    client.submit(b"f", b"small", unique=b"u")
    client.submit(b"f", big, priority=Priority.LOW)
    client.submitBackground(b"f", b"x", when=1700000000)
    client.submitBackground(b"f", big, unique=b"v", when=1700000000)
    assert written(clientTransport) == [
        ("SUBMIT_JOB", [b"f", b"u", b"small"]), ("SUBMIT_JOB_LOW", [b"f", b"", big]),
        ("SUBMIT_JOB_EPOCH", [b"f", b"", b"1700000000", b"x"]),
        ("SUBMIT_JOB_EPOCH", [b"f", b"v", b"1700000000", big])]

    factory = GearmanWorkerFactory(grabAhead=False)
    factory.register("f", lambda job: big if job.payload == b"big" else b"r")
    worker = factory.buildProtocol(None)
    workerTransport = StringTransport()
    worker.makeConnection(workerTransport)
    worker.dataReceived(res(P.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b"big"))
    worker.dataReceived(res(P.JOB_ASSIGN_UNIQ, b"H:2", b"f", b"", b"small"))
    assert written(workerTransport) == [
        ("CAN_DO", [b"f"]), ("GRAB_JOB_UNIQ", []), ("WORK_COMPLETE", [b"H:1", big]),
        ("GRAB_JOB_UNIQ", []), ("WORK_COMPLETE", [b"H:2", b"r"]), ("GRAB_JOB_UNIQ", [])]
