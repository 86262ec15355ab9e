"""
Bad input against the real server under twistd: after each kind, a normal
job still works on a new connection, and a connection opened before (the
bystander) was not stalled.

What txgear answers (docs/server.md, "Bad input"):
  - closed without a reply: bad magic, packet type 0 or > 42, a text line with
    more than 8 tokens or longer than 8 KiB;
  - C{ERROR ARGUMENT_TOO_LARGE} then closed: a size field above the maximum
    packet size (16 MiB by default);
  - C{ERROR} and the connection stays open: response magic on a request
    (INVALID_MAGIC), a response-only or unimplemented type (INVALID_COMMAND),
    too few arguments (INVALID_PACKET), work results for a job the connection
    does not hold (JOB_NOT_FOUND), an unknown option (UNKNOWN_OPTION);
  - text that is not a command: C{ERR UNKNOWN_COMMAND ...}, connection open.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from typing import Any, Iterator

import pytest

from tests._peers import txgearProcess, txgearServer
from tests._rawclient import RawClient, adminOnce, listing, waitFor
from txgear._packet import PacketType as P, requestHeader, responseHeader

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """One txgear server process for the module."""
    yield from txgearServer()


@pytest.fixture
def bystander(server: Any) -> Iterator[RawClient]:
    """A connection opened before the bad input, checked after it."""
    with RawClient(server.port) as c:
        c.echo(b"before")
        yield c
        started = time.monotonic()
        c.echo(b"after")
        assert time.monotonic() - started < 1.0, "the bystander connection was stalled"


def assertHealthy(server: Any) -> None:
    """A whole job round trip on new connections."""
    f = b"healthy-%d" % next(_names)
    with RawClient(server.port) as c, RawClient(server.port) as w:
        h = c.submit(f, b"payload\0with nul", b"hu")
        w.register(f)
        assert w.grab() == (P.JOB_ASSIGN_UNIQ, [h, f, b"hu", b"payload\0with nul"])
        w.send(P.WORK_COMPLETE, h, b"ok\0!")
        assert c.expect(P.WORK_COMPLETE) == [h, b"ok\0!"]


def test_garbageBytesStartingWithNul(server: Any, bystander: RawClient) -> None:
    """Garbage that starts with NUL is a packet with a bad magic: closed, no reply."""
    with RawClient(server.port) as c:
        c.sendRaw(b"\0\x01\x02\x03\xff\xfe\xfd\xfc" * 8)
        assert c.waitClosed() == b""
    assertHealthy(server)


def test_garbageText(server: Any, bystander: RawClient) -> None:
    """Garbage that starts with another byte is an admin line: ERR UNKNOWN_COMMAND, still open."""
    with RawClient(server.port) as c:
        reply = c.admin(b"\x01\x02\xff\xfegarbage\x80")
        assert reply == b"ERR UNKNOWN_COMMAND Unknown+server+command\x01\x02\xff\xfegarbage\x80\r\n"
        c.echo()
    assertHealthy(server)


def test_badMagic(server: Any, bystander: RawClient) -> None:
    with RawClient(server.port) as c:
        c.sendRaw(b"\0REX" + struct.pack(">II", P.ECHO_REQ, 2) + b"hi")
        assert c.waitClosed() == b""
    assertHealthy(server)


def test_sizeFieldOf4GiB(server: Any, bystander: RawClient) -> None:
    """A size field of 0xFFFFFFFF: ERROR ARGUMENT_TOO_LARGE, then closed (no 4 GiB buffer)."""
    with RawClient(server.port) as c:
        c.sendRaw(requestHeader(P.SUBMIT_JOB, 0xFFFFFFFF) + b"f\0\0partial")
        assert c.expect(P.ERROR)[0] == b"ARGUMENT_TOO_LARGE"
        assert c.waitClosed() == b""
    assertHealthy(server)


@pytest.mark.parametrize("kind", [0, 43, 1000, 0xFFFFFFFF])
def test_unknownPacketType(server: Any, bystander: RawClient, kind: int) -> None:
    """Type 0 or above 42: closed without a reply, as gearmand."""
    with RawClient(server.port) as c:
        c.sendRaw(b"\0REQ" + struct.pack(">II", kind, 3) + b"abc")
        assert c.waitClosed() == b""
    assertHealthy(server)


def test_wrongRole(server: Any, bystander: RawClient) -> None:
    """
    Response-only and unimplemented types sent to the server get ERROR
    INVALID_COMMAND; a response magic gets INVALID_MAGIC; the connection
    stays open throughout.
    """
    responseOnly = {P.UNUSED: b"", P.NOOP: b"", P.JOB_CREATED: b"H:x:1", P.NO_JOB: b"",
                    P.JOB_ASSIGN: b"H:x:1\0f\0d", P.ECHO_RES: b"e", P.ERROR: b"X\0y",
                    P.STATUS_RES: b"H\x001\x000\x000\x000", P.ALL_YOURS: b"",
                    P.OPTION_RES: b"exceptions", P.JOB_ASSIGN_UNIQ: b"H\0f\0u\0d",
                    P.JOB_ASSIGN_ALL: b"H\0f\0u\0r\0d",
                    P.STATUS_RES_UNIQUE: b"u\x000\x000\x000\x000\x000"}
    with RawClient(server.port) as c:
        for kind, body in responseOnly.items():
            c.sendRaw(requestHeader(kind, len(body)) + body)
            assert c.expect(P.ERROR) == [b"INVALID_COMMAND", b"Command not expected"], kind
        for kind in (P.ECHO_REQ, P.SUBMIT_JOB, P.CAN_DO, P.JOB_CREATED):
            c.sendRaw(responseHeader(kind, 1) + b"x")
            assert c.expect(P.ERROR) == [b"INVALID_MAGIC", b"Request magic expected"], kind
        c.echo()
    assertHealthy(server)


def test_truncatedPacketThenDisconnect(server: Any, bystander: RawClient) -> None:
    """Half a header, or a header and part of the body, then close: no trace left."""
    before = len(listing(adminOnce(server.port, "workers")))
    for data in (b"\0RE", requestHeader(P.SUBMIT_JOB, 100) + b"fn\0\0part",
                 requestHeader(P.CAN_DO, 5) + b"ab"):
        c = RawClient(server.port)
        c.sendRaw(data)
        c.close()
    waitFor(lambda: len(listing(adminOnce(server.port, "workers"))) == before,
            what="the truncated connections forgotten")
    assertHealthy(server)


def test_unknownHandle(server: Any, bystander: RawClient) -> None:
    """Work results and status queries about a handle nobody holds."""
    h = b"H:nosuch:999999"
    with RawClient(server.port) as c:
        assert c.call(P.GET_STATUS, h, reply=P.STATUS_RES) == [h, b"0", b"0", b"0", b"0"]
        assert c.call(P.GET_STATUS_UNIQUE, b"nosuch", reply=P.STATUS_RES_UNIQUE) == \
            [b"nosuch", b"0", b"0", b"0", b"0", b"0"]
        notFound = [b"JOB_NOT_FOUND", b"Job given in work result not found"]
        assert c.call(P.WORK_COMPLETE, h, b"r", reply=P.ERROR) == notFound
        assert c.call(P.WORK_FAIL, h, reply=P.ERROR) == notFound
        assert c.call(P.WORK_STATUS, h, b"1", b"2", reply=P.ERROR) == notFound
        assert c.call(P.WORK_DATA, h, b"d", reply=P.ERROR) == \
            [b"JOB_NOT_FOUND", b"Job does not exist on server"]
        assert c.call(P.WORK_WARNING, h, b"d", reply=P.ERROR) == \
            [b"JOB_NOT_FOUND", b"Job does not exist on server"]
        assert c.call(P.WORK_EXCEPTION, h, b"e", reply=P.ERROR) == \
            [b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist"]
        c.echo()
        assert c.admin("cancel job " + h.decode()) == b"ERR UNKNOWN_JOB\r\n"
    # a job held by another worker is "unknown" to this one
    with RawClient(server.port) as cl, RawClient(server.port) as w, RawClient(server.port) as other:
        job = cl.submit(b"held-elsewhere", b"x")
        w.register(b"held-elsewhere")
        assert w.grab()[1][0] == job
        assert other.call(P.WORK_COMPLETE, job, b"steal", reply=P.ERROR)[0] == b"JOB_NOT_FOUND"
        w.send(P.WORK_COMPLETE, job, b"mine")
        assert cl.expect(P.WORK_COMPLETE) == [job, b"mine"]
    assertHealthy(server)


def test_uniqueTooLarge(server: Any, bystander: RawClient) -> None:
    """A 65-byte unique: ERROR ARGUMENT_TOO_LARGE; 64 bytes is accepted."""
    with RawClient(server.port) as c:
        assert c.call(P.SUBMIT_JOB_BG, b"uniq-size", b"u" * 65, b"x", reply=P.ERROR) == \
            [b"ARGUMENT_TOO_LARGE", b"Unique value too large"]
        c.submit(b"uniq-size", b"x", b"u" * 64, P.SUBMIT_JOB_BG)
    assertHealthy(server)


def test_twoThousandConnectionsOpenedAndDropped(server: Any, bystander: RawClient) -> None:
    """
    2000 connections opened and dropped (half of them after an ECHO, some
    with a reset): the bystander keeps being served meanwhile, and the
    server's connection count and file descriptors come back down.
    """
    fdDir = f"/proc/{server.pid}/fd"
    fdsBefore = len(os.listdir(fdDir)) if os.path.isdir(fdDir) else None
    workersBefore = len(listing(adminOnce(server.port, "workers")))
    # Batches of 25: well under the listen backlog, so the kernel does not
    # drop SYNs (which costs a 1 s retransmission, with gearmand too).
    for batch in range(80):
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(25)]
        for i, s in enumerate(socks):
            if i % 2:
                s.sendall(b"\0REQ" + struct.pack(">II", P.ECHO_REQ, 1) + b"e")
        for s in socks:
            if batch % 2:  # RST instead of FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        started = time.monotonic()
        bystander.echo(b"during %d" % batch)
        assert time.monotonic() - started < 2.0
    waitFor(lambda: len(listing(adminOnce(server.port, "workers"))) == workersBefore, timeout=10,
            what="the dropped connections forgotten")
    if fdsBefore is not None:
        waitFor(lambda: len(os.listdir(fdDir)) <= fdsBefore + 2, timeout=10,
                what="the server's descriptors released")
    assertHealthy(server)


def test_textLineWithMoreThanEightTokens(server: Any, bystander: RawClient) -> None:
    with RawClient(server.port) as c:
        # eight tokens: extra ones ignored
        assert c.admin("status a b c d e f g").endswith(b".\n")
        c.sendRaw(b"status a b c d e f g h\n")
        assert c.waitClosed() == b""
    assertHealthy(server)


def test_overLongTextLine(server: Any, bystander: RawClient) -> None:
    with RawClient(server.port) as c:
        c.sendRaw(b"x" * 9000)  # no newline yet: closed once past 8 KiB
        assert c.waitClosed() == b""
    with RawClient(server.port) as c:
        c.sendRaw(b"status " + b"y" * 9000 + b"\n")
        assert c.waitClosed() == b""
    with RawClient(server.port) as c:  # 8000 bytes is fine
        assert c.admin(b"v" * 8000).startswith(b"ERR UNKNOWN_COMMAND")
    assertHealthy(server)


@pytest.mark.parametrize("kind,body", [
    (P.SUBMIT_JOB, b"onlyfunction"),
    (P.SUBMIT_JOB_BG, b"f\0u"),
    (P.SUBMIT_JOB_EPOCH, b"f\0u\0payload"),
    (P.SUBMIT_REDUCE_JOB, b"f\0u\0reducer\0payload"),  # the 3-NUL form gearmand mis-parses
    (P.WORK_STATUS, b"H:x:1\x001"),
    (P.WORK_COMPLETE, b"H:x:1"),
    (P.WORK_DATA, b"H:x:1"),
    (P.CAN_DO_TIMEOUT, b"f"),
])
def test_tooFewArguments(server: Any, bystander: RawClient, kind: int, body: bytes) -> None:
    """ERROR INVALID_PACKET; the connection stays usable and nothing was created."""
    with RawClient(server.port) as c:
        c.sendRaw(requestHeader(kind, len(body)) + body + requestHeader(P.ECHO_REQ, 4) + b"next")
        code, text = c.expect(P.ERROR)
        assert code == b"INVALID_PACKET", text
        assert c.expect(P.ECHO_RES) == [b"next"]  # the next packet was not eaten
    assert b"onlyfunction" not in adminOnce(server.port, "status")
    assertHealthy(server)


def test_payloadAtDefaultLimit(server: Any, bystander: RawClient) -> None:
    """
    Default C{--max-packet-size} (16 MiB of workload; the body may hold 64 KiB
    more for the other arguments): a 16 MiB workload passes both ways; a body
    past the allowance gets ARGUMENT_TOO_LARGE and a close.
    """
    limit = 16 * 1024 * 1024
    f = b"big-at-limit"
    payload = (b"\0\x01nul" * (limit // 5 + 1))[:limit]
    with RawClient(server.port, timeout=20) as c:
        h = c.submit(f, payload)
        with RawClient(server.port, timeout=20) as w:
            w.register(f)
            assert w.grab(P.GRAB_JOB) == (P.JOB_ASSIGN, [h, f, payload])
            w.send(P.WORK_COMPLETE, h, payload)
            assert c.expect(P.WORK_COMPLETE) == [h, payload]
        c.sendRaw(requestHeader(P.SUBMIT_JOB, limit + 65536 + 1) + f + b"\0\0" + payload[:65536])
        assert c.expect(P.ERROR)[0] == b"ARGUMENT_TOO_LARGE"
        assert c.waitClosed(10) == b""
    assertHealthy(server)


def test_payloadOver16MiBPassesIntact() -> None:
    """
    A 16 MiB + 1 KiB payload full of NULs goes client -> worker -> client
    byte for byte, on a server started with a larger C{--max-packet-size};
    a bystander is served meanwhile.
    """
    proc = txgearProcess(extra=["--max-packet-size", str(64 * 1024 * 1024)])
    proc.start()
    try:
        payload = bytes(range(256)) * ((16 * 1024 * 1024 + 1024) // 256)
        assert payload.count(b"\0") > 60000
        with RawClient(proc.port, timeout=30) as c, RawClient(proc.port, timeout=30) as w, \
                RawClient(proc.port) as by:
            h = c.submit(b"big", payload, b"big-u")
            by.echo()
            w.register(b"big")
            assert w.grab() == (P.JOB_ASSIGN_UNIQ, [h, b"big", b"big-u", payload])
            # one at a time: the server stops reading a worker whose
            # results pile up for a client that does not read (backpressure)
            w.send(P.WORK_DATA, h, payload)
            by.echo()
            assert c.expect(P.WORK_DATA) == [h, payload]
            w.send(P.WORK_COMPLETE, h, payload[::-1])
            assert c.expect(P.WORK_COMPLETE) == [h, payload[::-1]]
        assertHealthy(proc)
    finally:
        proc.stop()
