"""
Slow, hostile and buggy peers against the real server under twistd, over
real TCP on loopback (issue 8, items 1-6): one peer's behaviour costs only
itself; the server's memory stays bounded and comes back; a bystander
connection is always answered.

Each test starts its own server, so that its memory can be measured.
"""
from __future__ import annotations

import gc
import os
import platform
import socket
import struct
import threading
import time
import weakref
from typing import Any, Iterator, List

import pytest
import pytest_twisted

from tests._peers import txgearProcess
from tests._rawclient import RawClient
from txgear._packet import PacketType as P, encodeRequest, requestHeader

MiB = 1024 * 1024


def rssOf(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settledRss(pid: int, seconds: float = 1.0) -> int:
    """RSS once it has stopped changing for a moment (bounded wait)."""
    deadline = time.monotonic() + seconds * 5
    last = rssOf(pid)
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        now = rssOf(pid)
        if abs(now - last) < MiB:
            return now
        last = now
    return last


def silentSocket(port: int, receiveBuffer: int = 4096) -> socket.socket:
    """A connection that will not read: a small receive buffer, so the server sees it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    s.connect(("127.0.0.1", port))
    s.settimeout(10)
    return s


def assertAnswered(bystander: RawClient, within: float = 1.0) -> None:
    started = time.monotonic()
    bystander.echo(b"still there?")
    assert time.monotonic() - started < within, "the bystander connection was stalled"


def readUntil(sock: socket.socket, predicate: Any, limit: float = 30.0) -> bytes:
    """Read until C{predicate(data)} holds; fail after C{limit} seconds."""
    data = bytearray()
    deadline = time.monotonic() + limit
    while not predicate(data):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"gave up after {len(data)} bytes"
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        assert chunk, f"connection closed after {len(data)} bytes"
        data += chunk
    return bytes(data)


def isClosed(sock: socket.socket, limit: float = 10.0) -> bool:
    """Read (and drop) until the server closes C{sock}; C{False} if it stays open."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
    return False


@pytest.fixture
def startServer() -> Iterator[Any]:
    started: List[Any] = []

    def start(*extra: str) -> Any:
        proc = txgearProcess(extra=["--queue", "memory"] + list(extra))
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def createFunctions(port: int, count: int, prefix: bytes = b"function") -> None:
    with RawClient(port, timeout=30) as admin:
        admin.sendRaw(b"".join(b"create function %s-%05d\n" % (prefix, i) for i in range(count)))
        readUntil(admin.sock, lambda d: d.count(b"OK\r\n") >= count)


def test_statusFloodFromAPeerThatDoesNotRead(startServer: Any) -> None:
    """64 KiB of `status` with 2,000 functions: bounded memory, no freeze (was +306 MiB, 7 s)."""
    server = startServer()
    createFunctions(server.port, 2000)
    with RawClient(server.port) as bystander:
        bystander.echo()
        before = settledRss(server.pid)
        attackers = [silentSocket(server.port) for _ in range(3)]
        for attacker in attackers:
            attacker.sendall(b"status\n" * (65536 // 7))
        for _ in range(5):
            assertAnswered(bystander)
            time.sleep(0.1)
        grown = settledRss(server.pid) - before
        assert grown < 48 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        for attacker in attackers:
            attacker.close()
        assertAnswered(bystander)


def test_largeStatusNumeratorThenGetStatusFlood(startServer: Any) -> None:
    """A 1 MiB WORK_STATUS numerator, then GET_STATUS from a peer that does not read (was +1.5 GB)."""
    server = startServer()
    with RawClient(server.port) as client, RawClient(server.port) as worker, \
            RawClient(server.port) as bystander:
        handle = client.submit(b"numerator", b"x")
        worker.register(b"numerator")
        worker.grab()
        worker.send(P.WORK_STATUS, handle, b"7" * MiB, b"100")
        assert client.expect(P.WORK_STATUS)[0] == handle
        before = settledRss(server.pid)
        attacker = silentSocket(server.port)
        attacker.sendall(encodeRequest(P.GET_STATUS, handle) * (27000 // (12 + len(handle))))
        for _ in range(5):
            assertAnswered(bystander)
            time.sleep(0.1)
        grown = settledRss(server.pid) - before
        assert grown < 48 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        attacker.close()
        worker.send(P.WORK_COMPLETE, handle, b"done")
        assert client.expect(P.WORK_COMPLETE) == [handle, b"done"]


def test_aPeerThatDoesNotReadThenReadsGetsEveryAnswer(startServer: Any) -> None:
    server = startServer()
    createFunctions(server.port, 300)
    peer = silentSocket(server.port)
    count = 2000
    peer.sendall(b"status\n" * count + encodeRequest(P.ECHO_REQ, b"the end"))
    time.sleep(0.5)  # the server stops producing for it meanwhile
    with RawClient(server.port) as bystander:
        assertAnswered(bystander)
    echo = b"\0RES" + struct.pack(">II", P.ECHO_RES, 7) + b"the end"
    data = readUntil(peer, lambda d: d.endswith(echo))
    assert data.count(b"\n.\n") == count
    listing = data.split(b"\n.\n")[0]
    assert len(listing.split(b"\n")) == 300
    peer.close()


def test_echoFloodOnRealTcpNeverLeavesTheConnectionUnread(startServer: Any) -> None:
    """Many pauses, one resume: the connection is read again (was: an ECHO never answered)."""
    server = startServer()
    peer = silentSocket(server.port, receiveBuffer=16384)
    payload = os.urandom(64 * 1024)
    count = 200
    sender = threading.Thread(target=peer.sendall,
                              args=(encodeRequest(P.ECHO_REQ, payload) * count,), daemon=True)
    sender.start()
    time.sleep(0.5)  # not reading: the server's output for it fills up
    size = count * (12 + len(payload))
    data = readUntil(peer, lambda d: len(d) >= size)
    sender.join(10)
    assert not sender.is_alive()
    peer.sendall(encodeRequest(P.ECHO_REQ, b"last"))
    tail = readUntil(peer, lambda d: len(d) >= 16, limit=5)
    assert tail == b"\0RES" + struct.pack(">II", P.ECHO_RES, 4) + b"last"
    assert data[:12 + len(payload)] == b"\0RES" + struct.pack(">II", P.ECHO_RES, len(payload)) + payload
    peer.close()


def test_manyWritesToAFullConnectionThenOneDrainLeaveItRead(startServer: Any) -> None:
    """
    Results of ten workers reach a client that does not read: Twisted calls
    pauseProducing on each write while its buffer is full, resumeProducing
    once when it drains; the client must be read again (its ECHO answered).
    """
    server = startServer()
    client = silentSocket(server.port)
    count, chunk = 10, b"r" * (256 * 1024)
    client.sendall(b"".join(encodeRequest(P.SUBMIT_JOB, b"many", b"u%d" % i, b"x")
                            for i in range(count)))
    workers = [RawClient(server.port, timeout=10) for _ in range(count)]
    try:
        handles = []
        for worker in workers:
            worker.register(b"many")
            handles.append(worker.grab()[1][0])
        for _ in range(6):
            for worker, handle in zip(workers, handles):
                worker.send(P.WORK_DATA, handle, chunk)
            time.sleep(0.05)  # separate reactor turns
        for worker, handle in zip(workers, handles):
            worker.send(P.WORK_COMPLETE, handle, b"done")
        time.sleep(0.3)
        size = count * (12 + len(handles[0])) + count * 6 * (12 + len(handles[0]) + 1 + len(chunk))
        data = readUntil(client, lambda d: len(d) >= size)
        assert data.count(b"done") == count
        client.sendall(encodeRequest(P.ECHO_REQ, b"are you there"))
        echo = b"\0RES" + struct.pack(">II", P.ECHO_RES, 13) + b"are you there"
        readUntil(client, lambda d: d.endswith(echo), limit=5)
    finally:
        for worker in workers:
            worker.close()
        client.close()


def test_aSlowClientNeverStallsTheSharedWorkerAndIsClosedPastTheHardLimit(startServer: Any) -> None:
    server = startServer("--max-packet-size", str(MiB), "--output-soft-limit", "65536",
                         "--output-hard-limit", str(4 * MiB))
    slow = silentSocket(server.port)
    slow.sendall(encodeRequest(P.SUBMIT_JOB, b"shared", b"slow", b"x"))
    with RawClient(server.port) as fast, RawClient(server.port, timeout=10) as worker:
        worker.register(b"shared")
        grabbed = worker.grab()
        slowHandle = grabbed[1][0]
        assert grabbed[1][2] == b"slow"
        handle = fast.submit(b"shared", b"y", b"fast")
        chunk = b"d" * 65536
        # Far more than the slow client's limit and its socket buffers take.
        for _ in range(160):
            worker.send(P.WORK_DATA, slowHandle, chunk)
        worker.send(P.WORK_COMPLETE, slowHandle, b"done")
        # The worker is still read: it serves the other client at once.
        assert worker.grab()[1][0] == handle
        worker.send(P.WORK_COMPLETE, handle, b"fast result")
        assert fast.expect(P.WORK_COMPLETE, timeout=5) == [handle, b"fast result"]
        assert isClosed(slow), "the slow client was not disconnected"
    slow.close()


def test_oneResultToFiftyClientsThatDoNotReadIsHeldOnce(startServer: Any) -> None:
    """50 clients on one unique, a 16 MiB WORK_DATA: held once (was +673 MiB)."""
    server = startServer()
    clients = [silentSocket(server.port) for _ in range(50)]
    for c in clients:
        c.sendall(encodeRequest(P.SUBMIT_JOB, b"big", b"same", b"x"))
    with RawClient(server.port, timeout=20) as worker, RawClient(server.port) as bystander:
        worker.register(b"big")
        handle = worker.grab()[1][0]
        data = os.urandom(16 * MiB - 1024)
        before = settledRss(server.pid)
        worker.sendRaw(requestHeader(P.WORK_DATA, len(handle) + 1 + len(data)) + handle + b"\0")
        worker.sendRaw(data)
        worker.echo()
        assertAnswered(bystander)
        grown = settledRss(server.pid) - before
        assert grown < 160 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
        worker.send(P.WORK_COMPLETE, handle, b"end")
        # The clients read: each gets all of it.
        expected = 12 + len(handle) + 1 + len(data)
        for c in clients[:5]:
            received = readUntil(c, lambda d: len(d) >= 12 + expected)
            start = received.index(b"\0RES" + struct.pack(">I", P.WORK_DATA))
            assert received[start + 12 + len(handle) + 1:start + expected] == data
    for c in clients:
        c.close()


def _sendPart(port: int, announced: int, part: bytes) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    data = memoryview(requestHeader(P.ECHO_REQ, announced) + part)
    deadline = time.monotonic() + 2
    while data and time.monotonic() < deadline:
        try:
            data = data[s.send(data):]
        except BlockingIOError:
            time.sleep(0.01)  # the server does not read it (budget): send what it takes
    return s


def test_partialPacketsAreBoundedAndFreedWhenTheirConnectionsClose(startServer: Any) -> None:
    """Rounds of connections sending 4 MiB of a 16 MiB packet, then closing (was +800 MiB a round)."""
    server = startServer("--partial-packet-budget", str(64 * MiB))
    part = os.urandom(4 * MiB)
    with RawClient(server.port) as bystander:
        bystander.echo()
        before = settledRss(server.pid)
        peak = 0
        for _ in range(3):
            sockets = [_sendPart(server.port, 16 * MiB, part) for _ in range(40)]
            assertAnswered(bystander)
            peak = max(peak, rssOf(server.pid) - before)
            for s in sockets:
                s.close()
            assertAnswered(bystander)
        after = settledRss(server.pid) - before
        assert peak < 160 * MiB, f"RSS grew by {peak / MiB:.0f} MiB during the rounds"
        if platform.python_implementation() != "PyPy":  # PyPy gives memory back only when it collects
            assert after < 48 * MiB, f"RSS stayed {after / MiB:.0f} MiB above the start"


def test_aPacketNotFinishedWithinTheDeadlineClosesTheConnection(startServer: Any) -> None:
    server = startServer("--packet-deadline", "1")
    with RawClient(server.port) as bystander:
        trickler = socket.create_connection(("127.0.0.1", server.port))
        trickler.sendall(requestHeader(P.ECHO_REQ, 100) + b"x" * 10)
        assertAnswered(bystander)
        assert isClosed(trickler, limit=5)
        trickler.close()
        assertAnswered(bystander)


# -- in-process, over real TCP --------------------------------------------------


@pytest.mark.skipif(platform.python_implementation() == "PyPy",
                    reason="PyPy frees only by its collector, whatever the references")
@pytest_twisted.ensureDeferred
async def test_acceptedSocketsHaveKeepaliveAndClosedConnectionsAreFreed() -> None:
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString

    from txgear.server import GearmanServerFactory, JobServerState

    factory = GearmanServerFactory(JobServerState(clock=reactor))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    refs: List[Any] = []
    gc.collect()
    gc.disable()
    try:
        for round_ in range(4):
            clients = [await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
                       for _ in range(25)]
            for _ in range(100):
                if len(factory.connections) >= 25:
                    break
                await deferLater(0.01)
            servers = list(factory.connections.values())
            if round_ == 0:
                sock = servers[0].transport.getHandle()
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            for p in servers:
                refs.append(weakref.ref(p))
                refs.append(weakref.ref(p.session))
            closed = [p.whenClosed() for p in servers]
            for i, c in enumerate(clients):
                if i % 2:  # half of them hold part of a large packet
                    c.transport.write(requestHeader(P.ECHO_REQ, 4 * MiB) + b"p" * 100000)
                c.transport.loseConnection()
            await defer.DeferredList(closed)
            del servers, clients, closed, p
        await deferLater(0.05)
        alive = [r() for r in refs if r() is not None]
        assert alive == [], f"{len(alive)} protocols or sessions survive"
    finally:
        gc.enable()
        await port.stopListening()


def deferLater(seconds: float) -> Any:
    from twisted.internet import reactor, task

    return task.deferLater(reactor, seconds, lambda: None)
