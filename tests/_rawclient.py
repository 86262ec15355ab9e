"""
A blocking, raw-socket Gearman peer for the loopback integration tests.

L{RawClient} sends hand-built request packets (L{encodeRequest}) or arbitrary
bytes, and reads the server's responses with L{PacketDecoder}
(C{expectRequests=False}), or admin text replies with L{RawClient.admin}.
Every read has a timeout, so a test that waits for something the server never
sends fails instead of hanging.

Binary replies and admin replies must not be outstanding at the same time on
one connection: L{RawClient.admin} reads raw bytes, L{RawClient.recv} decodes
packets.
"""
from __future__ import annotations

import socket
import time
from typing import List, Optional, Sequence, Tuple

from txgear._packet import ARGUMENT_COUNTS, PacketDecoder, PacketType, encodeRequest, splitArguments

#: Admin commands whose reply is a listing ended by a line holding a dot.
_LISTINGS = {(b"status",), (b"prioritystatus",), (b"workers",), (b"show", b"jobs"),
             (b"show", b"unique", b"jobs")}

Packet = Tuple[int, List[bytes]]


class ConnectionClosed(Exception):
    """The server closed the connection while a reply was expected."""


class RawClient:
    """
    One TCP connection to a job server, driven synchronously.

    @ivar packets: decoded packets received but not yet returned by L{recv}.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = PacketDecoder(expectRequests=False, maxPacket=2 ** 31)
        self.packets: List[Packet] = []
        self.closed = False

    # -- sending -----------------------------------------------------------

    def send(self, kind: int, *args: bytes) -> None:
        """Send one request packet."""
        self.sock.sendall(encodeRequest(kind, *args))

    def sendRaw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- binary replies ----------------------------------------------------

    def _read(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            raise ConnectionClosed("server closed the connection")
        return data

    def recv(self, timeout: Optional[float] = None) -> Packet:
        """The next response packet as C{(type, arguments)}."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.packets:
            for kind, body in self.decoder.feed(self._read(deadline)):
                if kind < 0:
                    raise AssertionError(f"server sent a request-magic packet of type {-kind}")
                self.packets.append((kind, splitArguments(kind, body)))
            if self.decoder.error is not None:
                raise AssertionError(f"undecodable reply: {self.decoder.error}")
        return self.packets.pop(0)

    def expect(self, kind: int, timeout: Optional[float] = None) -> List[bytes]:
        """The next packet, which must be of type C{kind}: its arguments."""
        got, args = self.recv(timeout)
        assert got == kind, (
            f"expected {PacketType(kind).name}, got {PacketType(got).name} {args!r}")
        return args

    def call(self, kind: int, *args: bytes, reply: int, timeout: Optional[float] = None) -> List[bytes]:
        """Send a request and return the arguments of the reply (of type C{reply})."""
        self.send(kind, *args)
        return self.expect(reply, timeout)

    def recvNothing(self, duration: float = 0.3) -> None:
        """Assert that no packet arrives within C{duration} seconds."""
        try:
            packet = self.recv(duration)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected packet {PacketType(packet[0]).name} {packet[1]!r}")

    def recvAll(self, count: int, timeout: Optional[float] = None) -> List[Packet]:
        """The next C{count} packets."""
        return [self.recv(timeout) for _ in range(count)]

    def waitClosed(self, timeout: float = 5.0) -> bytes:
        """
        Read until the server closes the connection; return what was received
        meanwhile (raw bytes beyond those decoded are not kept).

        @raise AssertionError: the connection is still open after C{timeout}.
        """
        deadline = time.monotonic() + timeout
        received = b""
        while True:
            try:
                received += self._read(deadline)
            except ConnectionClosed:
                return received
            except socket.timeout:
                raise AssertionError(f"connection still open after {timeout}s")
            except OSError:
                return received

    # -- admin text --------------------------------------------------------

    def admin(self, line: bytes | str, timeout: Optional[float] = None) -> bytes:
        """
        Send one admin line (C{\\n} added) and return the whole reply: up to
        the C{.} line for a listing, else one line.
        """
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.sock.sendall(line + b"\n")
        words = tuple(w.lower() for w in line.split())
        listing = words in _LISTINGS or words[:2] == (b"show", b"dead")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        data = b""
        while True:
            if listing:
                if data == b".\n" or data.endswith(b"\n.\n"):
                    return data
                if data.startswith(b"ERR ") and data.endswith(b"\n"):
                    return data
            elif data.endswith(b"\n"):
                return data
            data += self._read(deadline)

    def showResult(self, argument: bytes | str, timeout: Optional[float] = None) -> bytes:
        """
        C{show result ARGUMENT}: the whole reply, read by its framing (C{OK
        <status> <size>}, exactly <size> bytes, C{\n}), or one C{ERR} line.
        """
        if isinstance(argument, str):
            argument = argument.encode("utf-8")
        self.sock.sendall(b"show result " + argument + b"\n")
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        data = b""
        while True:
            head, newline, rest = data.partition(b"\n")
            if newline:
                if not head.startswith(b"OK "):
                    return data
                size = int(head.split()[2])
                if len(rest) >= size + 1:
                    return data
            data += self._read(deadline)

    # -- worker helpers ----------------------------------------------------

    def register(self, *functions: bytes, clientId: Optional[bytes] = None) -> None:
        if clientId is not None:
            self.send(PacketType.SET_CLIENT_ID, clientId)
        for function in functions:
            self.send(PacketType.CAN_DO, function)
        self.echo()  # barrier: the server has handled the registrations

    def echo(self, data: bytes = b"barrier") -> None:
        """ECHO round trip: everything sent before has been processed."""
        self.send(PacketType.ECHO_REQ, data)
        assert self.expect(PacketType.ECHO_RES) == [data]

    def grab(self, kind: int = PacketType.GRAB_JOB_UNIQ) -> Packet:
        self.send(kind)
        return self.recv()

    def submit(self, function: bytes, payload: bytes, unique: bytes = b"",
               kind: int = PacketType.SUBMIT_JOB) -> bytes:
        """Submit and return the handle from JOB_CREATED."""
        return self.call(kind, function, unique, payload, reply=PacketType.JOB_CREATED)[0]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def adminOnce(port: int, line: bytes | str, timeout: float = 5.0) -> bytes:
    """One admin command on a fresh connection."""
    with RawClient(port, timeout=timeout) as c:
        return c.admin(line)


def listing(reply: bytes) -> List[bytes]:
    """The lines of a listing reply, without the final C{.}."""
    assert reply.endswith(b".\n"), reply
    lines = reply[:-2].split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


def waitFor(predicate, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    """Poll C{predicate} until it returns a true value (returned) or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def statusOf(port: int, function: bytes) -> Optional[Tuple[int, int, int]]:
    """C{(total, running, workers)} of C{function} in C{status}, or C{None}."""
    for line in listing(adminOnce(port, "status")):
        fields = line.split(b"\t")
        if fields[0] == function:
            return int(fields[1]), int(fields[2]), int(fields[3])
    return None


__all__: Sequence[str] = ["RawClient", "ConnectionClosed", "adminOnce", "listing", "waitFor",
                          "statusOf", "ARGUMENT_COUNTS"]


# -- the gearman / gearadmin command-line peers ---------------------------------

import os as _os
import signal as _signal
import subprocess as _subprocess


def runTool(argv: List[str], timeout: float = 10.0, input: Optional[bytes] = None) -> "_subprocess.CompletedProcess[bytes]":
    """Run C{gearman}/C{gearadmin} to completion (bounded); returns the result."""
    return _subprocess.run(argv, input=input if input is not None else b"",
                           stdout=_subprocess.PIPE, stderr=_subprocess.PIPE, timeout=timeout)


class ToolProcess:
    """
    A long-running peer (C{gearman -w ...} worker, or a waiting client) in
    its own process group, stopped by its id (the group holds the command
    the worker runs, so nothing is left behind).
    """

    def __init__(self, argv: List[str]) -> None:
        self.argv = argv
        self.process = _subprocess.Popen(argv, stdin=_subprocess.DEVNULL, stdout=_subprocess.PIPE,
                                         stderr=_subprocess.PIPE, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would."""
        if self.process.poll() is None:
            try:
                _os.killpg(self.process.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                _os.killpg(self.process.pid, _signal.SIGTERM)
                self.process.wait(5)
            except (ProcessLookupError, _subprocess.TimeoutExpired):
                self.kill()
        else:  # the tool exited; its children may not have
            try:
                _os.killpg(self.process.pid, _signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def communicate(self, timeout: float = 10.0) -> Tuple[bytes, bytes]:
        """Wait (bounded) for the tool to exit; its stdout and stderr."""
        try:
            return self.process.communicate(timeout=timeout)
        except _subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv} still running after {timeout}s")

    def __enter__(self) -> "ToolProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
